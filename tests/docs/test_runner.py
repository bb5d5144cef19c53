"""The runner of the docs' runnable blocks (tests/docs/runner.py) on small documents, without a stack: it fails on
what issue 28 found (an answer other than the one shown, a snippet that prints nothing, one that fails)."""

from __future__ import annotations

from .markdown import Document
from .runner import ellipsis_match, run_document


def run(text: str, **options):
    return run_document(Document.from_text("doc.md", text), **options)


def test_output_matches_with_ellipsis_and_any_whitespace():
    assert ellipsis_match(
        "HTTP/1.1 202 Accepted\n...\nretry-after: 10\n...", "HTTP/1.1 202 Accepted\r\nx: y\r\nretry-after: 10\r\n\r\n{}"
    )
    assert ellipsis_match('{"id":"run_...","status":"queued",...}', '{"id":"run_6b1","status":"queued","a":1}')
    assert ellipsis_match("a  b\n c", "a b c") and ellipsis_match("...", "anything")


def test_a_different_answer_does_not_match():
    # The README showed `Retry-After: 1`; the service answers 10.
    assert not ellipsis_match("retry-after: 1\n...", "retry-after: 10\ncontent-length: 5")
    assert not ellipsis_match("31 response.content_part.done\n...", "")  # starting_after past the last event
    assert not ellipsis_match("a...b...c", "a c b") and not ellipsis_match("ab...ba", "aba")


def test_blocks_run_in_one_session_in_order_and_python_sees_what_was_exported():
    result = run("""
```bash runnable
GREETING=hello
export NAME=docs
```

```bash runnable
echo "$GREETING"
```

```text output
hello
```

```python runnable
import os
print("python", os.environ["NAME"])
```

```text output
python docs
```
""")
    assert result.ok, result.problems
    assert [r.output for r in result.runs] == ["", "hello", "python docs"]


def test_an_answer_other_than_the_one_shown_fails_with_both():
    result = run("```bash runnable\necho 'retry-after: 10'\n```\n\n```text output\nretry-after: 1\n```\n")
    assert not result.ok
    assert "doc.md:1" in result.problems[0] and "retry-after: 1\n" in result.problems[0]
    assert "retry-after: 10" in result.problems[0]


def test_a_failing_block_stops_the_session_and_is_named_with_its_error():
    result = run(
        "```bash runnable\necho before\n```\n\n```bash runnable\necho partial\nfalse\necho never\n```\n\n"
        "```bash runnable\necho later\n```\n"
    )
    assert [r.finished for r in result.runs] == [True, False, False]
    assert len(result.problems) == 1 and result.problems[0].startswith("doc.md:5: the bash block failed")
    assert "partial" in result.problems[0] and "never" not in result.problems[0]


def test_an_unset_variable_and_a_failing_pipe_are_failures():
    assert not run('```bash runnable\necho "$NOT_SET_ANYWHERE"\n```\n').ok
    assert not run("```bash runnable\nfalse | cat\n```\n").ok
    assert not run("```python runnable\nraise SystemExit(3)\n```\n").ok


def test_substitutions_apply_to_the_block_and_to_its_expected_output():
    text = "```bash runnable\necho http://127.0.0.1:7071/api\n```\n\n```text output\nhttp://127.0.0.1:7071/api\n```\n"
    result = run(text, substitutions={"127.0.0.1:7071": "127.0.0.1:45678"})
    assert result.ok and result.runs[0].output == "http://127.0.0.1:45678/api"


def test_nothing_of_the_test_runners_environment_reaches_the_blocks(monkeypatch):
    monkeypatch.setenv("RESPONSES_API_KEYS", "leaked")
    assert run('```bash runnable\necho "${RESPONSES_API_KEYS:-unset}"\n```\n\n```text output\nunset\n```\n').ok


def test_a_block_that_takes_too_long_is_a_failure():
    result = run("```bash runnable\necho started\nsleep 30\n```\n", timeout=1)
    assert not result.ok and "timed out" in result.problems[0] and "started" in result.problems[0]
