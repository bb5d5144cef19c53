"""azd hooks (run on the deploying machine or in CI, never deployed: .funcignore leaves infra/ out)."""
