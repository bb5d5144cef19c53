"""The emulator's control API (``/v1/_emulator/...``) from Python, for tests and benchmarks (sync, httpx).

    control = EmulatorControl("http://127.0.0.1:7070/v1")          # any running emulator, thread or process
    control.deployment_url("payg")                                  # a deployment's base URL for the SDK
    control.set_quota("ptu", rpm=60, tpm=100_000)                   # every model at ptu; model="gpt-4.1" for one
    control.take_down("ptu", "refuse", for_s=120); control.bring_up("ptu")
    control.configure(fault_429_rate=0.1); control.configure("payg", insufficient_quota=True)

Settings of a deployment go through the control routes that every deployment serves, so they work while that
deployment refuses connections: a call tries the primary's port first, then the other deployments'.
"""

from __future__ import annotations

from typing import Any

import httpx


class EmulatorControl:
    def __init__(self, base_url: str | None = None) -> None:
        if base_url is not None:
            self.base_url = base_url
        self._urls: dict[str, str] | None = None

    base_url: str
    """The primary deployment's base URL (``http://host:port/v1``)."""

    # -- deployments ----------------------------------------------------------------------------------
    def deployment_urls(self) -> dict[str, str]:
        """name -> base URL of every deployment (asked once; ports do not change across outages)."""
        if self._urls is None:
            rows = _checked(httpx.get(f"{self.base_url}/_emulator/deployments", timeout=10)).json()["data"]
            self._urls = {row["name"]: row["base_url"] for row in rows}
        return self._urls

    def deployment_url(self, name: str) -> str:
        urls = self.deployment_urls()
        if name not in urls:
            raise KeyError(f"no deployment {name!r}; there are {', '.join(urls)}")
        return urls[name]

    def deployments(self) -> list[dict[str, Any]]:
        """Each deployment's name, base URLs, port, outage (None, "refuse" or "503") and when it comes back."""
        return self._control("GET", "deployments").json()["data"]

    def take_down(self, deployment: str, outage: str = "refuse", for_s: float | None = None) -> dict[str, Any]:
        """``refuse``: its port closes (connection refused, open connections cut); ``503``: every API request is a
        503. ``for_s``: it comes back by itself after that many seconds."""
        self.deployment_urls()  # learnt while the port is still open, to come back through another
        body: dict[str, Any] = {"outage": outage}
        if for_s is not None:
            body["for_s"] = for_s
        return self._control("POST", f"deployments/{deployment}", json=body).json()

    def bring_up(self, deployment: str) -> dict[str, Any]:
        return self._control("POST", f"deployments/{deployment}", json={"outage": None}).json()

    # -- settings and quotas --------------------------------------------------------------------------
    def configure(self, deployment: str | None = None, **config: Any) -> dict[str, Any]:
        """Change settings (EmulatorConfig fields) of the primary or of a named deployment; returns them all."""
        path = "config" if deployment is None else f"deployments/{deployment}/config"
        return self._control("POST", path, json=config).json()

    def config(self, deployment: str | None = None) -> dict[str, Any]:
        return self._control("GET", "config" if deployment is None else f"deployments/{deployment}/config").json()

    def set_quota(
        self,
        deployment: str | None = None,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        model: str | None = None,
        **more: Any,
    ) -> dict[str, Any]:
        """Requests/tokens per window for every model of a deployment, or (``model``) for one model only; ``more``
        are other quota settings (``quota_style``, ``quota_window_s``, ``ratelimit_headers``, ...)."""
        changes = dict(more)
        if model is None:
            changes.update({k: v for k, v in (("rpm_limit", rpm), ("tpm_limit", tpm)) if v is not None})
        else:
            limits = dict(self.config(deployment)["model_limits"])
            limits[model] = {
                **limits.get(model, {}),
                **{k: v for k, v in (("rpm", rpm), ("tpm", tpm)) if v is not None},
            }
            changes["model_limits"] = limits
        return self.configure(deployment, **changes)

    def quotas(self, deployment: str | None = None) -> dict[str, Any]:
        """Every model's limits and what is left now (the deployment must be up)."""
        return _checked(httpx.get(f"{self._url(deployment)}/_emulator/quotas", timeout=10)).json()

    # -- what happened ----------------------------------------------------------------------------------
    def responses(self, deployment: str | None = None, **metadata: str) -> list[dict[str, Any]]:
        params = {f"metadata.{k}": v for k, v in metadata.items()}
        response = httpx.get(f"{self._url(deployment)}/_emulator/responses", params=params, timeout=120)
        return _checked(response).json()["data"]

    def stats(self, deployment: str | None = None) -> dict[str, Any]:
        return _checked(httpx.get(f"{self._url(deployment)}/_emulator/stats", timeout=30)).json()

    def reset(self, deployment: str | None = None, **options: bool) -> None:
        _checked(httpx.post(f"{self._url(deployment)}/_emulator/reset", json=options, timeout=30))

    # -- plumbing -----------------------------------------------------------------------------------------
    def _url(self, deployment: str | None) -> str:
        return self.base_url if deployment is None else self.deployment_url(deployment)

    def _control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Through the primary, or when it refuses connections through the first other deployment that accepts
        (known once deployment_urls() was answered; take_down asks it first)."""
        try:
            return _checked(httpx.request(method, f"{self.base_url}/_emulator/{path}", timeout=30, **kwargs))
        except httpx.ConnectError as exc:
            refused = exc
        try:
            others = [u for u in self.deployment_urls().values() if u != self.base_url]
        except httpx.ConnectError:
            raise refused from None
        for url in others:
            try:
                return _checked(httpx.request(method, f"{url}/_emulator/{path}", timeout=30, **kwargs))
            except httpx.ConnectError:
                continue
        raise refused


def _checked(response: httpx.Response) -> httpx.Response:
    """raise_for_status, with the emulator's error message in the exception."""
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {response.request.url}: {response.text}",
            request=response.request,
            response=response,
        )
    return response
