"""The code in README.md and docs/*.md runs as written, against a real daemon.

Every fenced block is collected from the Markdown:
- ```python and ```sh blocks are run (in a scratch folder holding a copy of examples/ and a
  link to .venv; `inferd` on the PATH) and must exit 0;
- ``` blocks whose first line starts with `$ ` are transcripts: the command is run and its output
  must match the sample (numbers, absolute paths and `...` lines are wildcards);
- ```yaml blocks that are configs (or parts of one) are validated like a config file.
HTML comments just before a block steer it:
  <!-- docs-test: daemon -->          the block runs `inferd run`: started in the background
                                      for the blocks after it in that file, stopped at the end
  <!-- docs-test: skip REASON -->     not run, and why (a reason is required)
  <!-- docs-test: setup ... -->       shell lines run first (inputs the reader brings)
Addresses are moved to free ports and a scratch folder (5555, 9464 and /tmp/inferd in the text).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from inferd.capture.config import CaptureConfig
from inferd.config import Config, parse_config
from tests.conftest import ROOT
from tests.daemon_harness import free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = ROOT / ".venv" / "bin"
FENCE = re.compile(r"((?:<!--(?:(?!-->).)*-->\s*)*)^```(\w*)\n(.*?)^```", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(\w+)(.*?)-->", re.S)


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if "skip" in self.directives:
            return "skip"
        if self.lang in ("python", "sh"):
            return "daemon" if "daemon" in self.directives else self.lang
        if self.lang == "" and self.text.startswith("$ "):
            return "transcript"
        if self.lang == "yaml":
            return "yaml"
        return "text"  # diagrams, wire examples, other languages


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    out = []
    for m in FENCE.finditer(text):
        directives = {d.group(1): d.group(2).strip() for d in DIRECTIVE.finditer(m.group(1))}
        line = text[: m.start(2)].count("\n") + 1
        out.append(Block(doc, line, m.group(2), m.group(3), directives))
    return out


class Scratch:
    """A scratch folder, free addresses, and the daemon a doc's blocks talk to."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.subs = {
            "/tmp/inferd": str(tmp / "run"),
            "127.0.0.1:5555": f"127.0.0.1:{free_port()}",
            "127.0.0.1:9464": f"127.0.0.1:{free_port()}",
        }
        shutil.copytree(ROOT / "examples", tmp / "examples")
        (tmp / ".venv").symlink_to(ROOT / ".venv")
        example = tmp / "examples" / "inferd.yaml"
        example.write_text(self.sub(example.read_text()))
        self.env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
        self.daemon: subprocess.Popen | None = None

    def sub(self, text: str) -> str:
        for old, new in self.subs.items():
            text = text.replace(old, new)
        return text

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start_daemon(self, command: str) -> None:
        log = open(self.tmp / "daemon.log", "w")  # noqa: SIM115
        self.daemon = subprocess.Popen(
            ["bash", "-c", "exec " + self.sub(command.split("#")[0].strip())],
            cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        end = time.monotonic() + 30
        while "ready:" not in self.daemon_log():
            assert self.daemon.poll() is None, f"the daemon exited:\n{self.daemon_log()}"
            assert time.monotonic() < end, f"the daemon is not ready:\n{self.daemon_log()}"
            time.sleep(0.05)

    def daemon_log(self) -> str:
        return (self.tmp / "daemon.log").read_text()

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            assert self.daemon.wait(30) == 0, self.daemon_log()


def transcript_pattern(sample: list[str]) -> re.Pattern:
    """A sample output as a regex: numbers, absolute paths and `...` lines match anything."""
    lines = []
    for line in sample:
        if line.strip() == "...":
            lines.append(r"(?:.*\n)*?")
            continue
        parts = []
        for token in re.split(r"(\s+)", line.strip()):
            if not token or token.isspace():
                parts.append(r"\s+" if token else "")
            elif token.endswith("...") or token.startswith("/"):
                parts.append(r"\S+")
            else:
                parts.append(r"-?\d+(?:\.\d+)?".join(re.escape(p) for p in re.split(r"\d+(?:\.\d+)?", token)))
        lines.append(r"[ \t]*" + "".join(parts) + r"[ \t]*\n")
    return re.compile("".join(lines))


def split_transcript(text: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    command = lines.pop(0)[2:]
    while command.endswith("\\"):
        command = command[:-1] + " " + lines.pop(0).strip()
    return command, lines


def run_block(block: Block, scratch: Scratch) -> None:
    if "setup" in block.directives:
        proc = scratch.run(["bash", "-euo", "pipefail", "-c", scratch.sub(block.directives["setup"])])
        assert proc.returncode == 0, f"{block.where}: setup failed:\n{proc.stdout}{proc.stderr}"
    kind = block.kind
    if kind == "daemon":
        scratch.start_daemon(block.text.strip())
    elif kind == "python":
        proc = scratch.run([str(VENV_BIN / "python"), "-c", scratch.sub(block.text)])
        assert proc.returncode == 0, f"{block.where}:\n{block.text}\n{proc.stdout}{proc.stderr}"
    elif kind == "sh":
        proc = scratch.run(["bash", "-euo", "pipefail", "-c", scratch.sub(block.text)])
        assert proc.returncode == 0, f"{block.where}:\n{block.text}\n{proc.stdout}{proc.stderr}"
    elif kind == "transcript":
        command, sample = split_transcript(block.text)
        proc = scratch.run(["bash", "-c", scratch.sub(command)])
        output = proc.stdout + proc.stderr
        assert transcript_pattern(sample).search(output), (
            f"{block.where}: `{command}` printed\n{output}\nwhich does not match the sample\n"
            + "\n".join(sample)
        )
    elif kind == "yaml":
        data = yaml.safe_load(block.text)
        if isinstance(data, dict) and {"url", "to"} <= set(data):  # a camera for `inferd capture`
            CaptureConfig.model_validate(data)
        elif isinstance(data, dict) and set(data) <= set(Config.model_fields):
            data.setdefault("models", [{"name": "m", "path": "m.onnx"}])
            parse_config(yaml.safe_dump(data), block.where)  # raises ConfigError with the key path


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_the_docs_code_runs_as_written(doc, tmp_path):
    scratch = Scratch(tmp_path)
    try:
        for block in blocks(doc):
            run_block(block, scratch)
    finally:
        scratch.stop()


def test_every_block_that_is_not_run_says_why():
    for doc in DOCS:
        for block in blocks(doc):
            if block.kind == "skip":
                assert block.directives["skip"], f"{block.where}: docs-test: skip needs a reason"


def test_the_transcript_matcher_is_strict_about_words():
    pattern = transcript_pattern(["config examples/inferd.yaml: OK", "  model a: onnx, 0.4 ms", "  ..."])
    assert pattern.search("config examples/inferd.yaml: OK\n  model a: onnx, 12.75 ms\n  more\n")
    assert not pattern.search("config examples/inferd.yaml: FAILED\n  model a: onnx, 0.4 ms\n")
    assert not pattern.search("config examples/inferd.yaml: OK\n  model a: tflite, 0.4 ms\n")
