"""Every ``duma`` command in the README runs as written.

The commands are read from the README's shell blocks, so a command added there without a
line here fails the first test. They run in a scratch folder holding the placeholder files
the README names (``data.jsonl``, ``SET``, ``RUN.yaml``...), in order, through the real CLI in
this process (models load once). Where a command as written would run for many minutes, the
table below says what is changed and why; nothing else is.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from duma.testing import run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# README command -> (how it runs here, standard input). ``None`` runs it as written. A string
# replaces it, and the comment says why. Placeholders: ID is the newest conversation.
SHORTER = "training.max_steps=2"  # the README's runs take minutes; two steps show they start
README_COMMANDS: dict[str, tuple[str | None, str | None]] = {
    'duma chat': (None, "hello!\n"),
    'duma chat -s "You are terse." -o temperature 0.7 -o max_tokens 200': (None, "Say hi.\n"),
    'duma chat -m path/to/hf-model-folder': (None, "hello\n"),
    'duma chat -m path/to/hf-model-folder --agent': (None, "hello\n"),
    'duma -S model.dtype=int8 chat': (None, "hello\n"),
    'duma chat --router always-slow --show-slow': (None, "what is 2+2?\n"),
    'duma chat -c': (None, "thanks!\n"),
    'echo "What is the capital of France?" | duma chat': ("duma chat", "What is the capital of France?\n"),
    'duma prompt "Name three prime numbers."': (None, None),
    # A server runs until stopped: here its help shows the command exists; tests/test_serve.py
    # runs `duma serve` for real, with keys, against the openai client.
    'duma serve': ("duma serve --help", None),
    'duma serve --host 0.0.0.0 --api-key "$DUMA_KEY"': ("duma serve --help", None),
    'duma logs list': (None, None),
    # The ratings loop: two sampled replies to one question, rated; their DPO pair trains the
    # shipped fast mind, shipped into a folder of the workspace (never the package's own).
    "printf 'Write a one-line slogan for a tea shop.\\n!good\\n' | duma chat -o temperature 1 -o seed 4":
        ("duma chat -o temperature 1 -o seed 4", "Write a one-line slogan for a tea shop.\n!good\n"),
    "printf 'Write a one-line slogan for a tea shop.\\n!bad too plain\\n' | duma chat -o temperature 1 -o seed 2":
        ("duma chat -o temperature 1 -o seed 2", "Write a one-line slogan for a tea shop.\n!bad too plain\n"),
    'duma logs export --format dpo --mind fast --out fast-pairs.jsonl': (None, None),
    'duma train configs/examples/dpo_fast_mind.yaml': (None, None),
    'duma minds ship --fast-adapter runs/dpo-fast-mind --slow-adapter agents/default_minds/slow --into my-minds':
        (None, None),
    'duma -S agent.fast.adapter=my-minds/fast chat': (None, "Write a one-line slogan for a tea shop.\n"),
    'duma logs show ID': (None, None),
    'duma logs search "capital"': (None, None),
    'duma logs delete ID -y': (None, None),
    'duma logs path': (None, None),
    'duma quantize embedded --method gguf --bits 4 --out smollm2-q4_1.gguf':
        ("duma quantize embedded --method gguf --bits 4 --out smollm2-q4_1.gguf --no-ppl", None),
    'duma quantize agents/default_minds/fast --method gguf --bits 8 --out fast-mind.gguf':
        (f"duma quantize {REPO}/agents/default_minds/fast --method gguf --bits 8 --out fast-mind.gguf --no-ppl", None),
    'duma quantize agents/default_minds/fast --method gguf -o lora true --out fast-mind.lora.gguf':
        (f"duma quantize {REPO}/agents/default_minds/fast --method gguf -o lora true --out fast-mind.lora.gguf "
         "--no-ppl", None),
    'duma quantize embedded --method onnx --bits 8 --out smollm2-onnx-int8':
        ("duma quantize embedded --method onnx --bits 8 --out smollm2-onnx-int8 --no-ppl", None),
    'duma quantize embedded --method int8 --out smollm2-int8':
        ("duma quantize embedded --method int8 --out smollm2-int8 --no-ppl", None),
    'duma chat -m smollm2-onnx-int8': (None, "hello\n"),
    "duma chat -m smollm2-q4_1.gguf --backend llamacpp": (None, "hello\n"),
    'duma -S model.backend=transformers chat': (None, "hello\n"),
    'duma config show': (None, None),
    'duma config schema': (None, None),
    'duma router score --router classifier "what is 17% of 2,340?" "hello!"': (None, None),
    'duma router train configs/examples/routers/labelled_turns.jsonl --out router.npz': (None, None),
    'duma router calibrate configs/examples/routers/turns.txt --router classifier -o path router.npz --slow-share 0.3':
        (None, None),
    'duma --config duma.yaml router calibrate configs/examples/routers/turns.txt --router classifier '
    '--slow-share 0.3 --save': (None, None),
    'duma data validate belle data.jsonl': (None, None),
    'duma data stats data.jsonl --tokenizer embedded --out lengths.png': (None, None),
    'duma data convert in.jsonl out.jsonl --from belle --to sharegpt': (None, None),
    'duma data dedup in.jsonl --out deduped.jsonl': (None, None),
    'duma data split in.jsonl --eval-ratio 0.05 --out-dir split/': (None, None),
    'duma train configs/examples/sft_tiny.yaml': (None, None),
    'duma train configs/examples/lora_embedded.yaml training.lr=1e-4':
        (f"duma train configs/examples/lora_embedded.yaml training.lr=1e-4 {SHORTER}", None),
    'duma train RUN.yaml --resume': (None, None),
    'duma train RUN.yaml --nproc 2': (f"duma train RUN.yaml --nproc 2 --overwrite {SHORTER}", None),
    'duma export --merge runs/my-lora --out runs/merged': (None, None),
    'duma chat -m runs/sft-tiny': (None, "hello\n"),
    # 50 questions judged by the model take about half an hour here: 1 shows the same path.
    'duma eval run --set ../shared/data/belle/eval_set.json --limit 50 -m embedded --out eval-results '
    '--judge-prompts ../shared/data/belle/eval_prompt.json':
        ("duma eval run --set ../shared/data/belle/eval_set.json --limit 1 -m embedded --out eval-results "
         "--judge-prompts ../shared/data/belle/eval_prompt.json", None),
    'duma eval run --set SET --judge numeric': (None, None),
    'duma eval ppl runs/sft-tiny corpus.txt': (None, None),
    'duma eval routing configs/examples/routers/routing.jsonl --slow-share 0.3': (None, None),
    'duma eval agent SET --judge contains --out eval-results/agent': (None, None),
    "printf 'what is 17%% of 2,340?\\nhello!\\n' | duma chat --show-slow":
        ("duma chat --show-slow", "what is 17% of 2,340?\nhello!\n"),
}


def readme_commands() -> list[str]:
    """The ``duma`` command lines of the README's shell blocks, comments and prompts removed,
    continuation lines joined."""
    commands, block, pending = [], None, ""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = None if block is not None else (line[3:].strip() or "text")
            continue
        if block not in ("bash", "console"):
            continue
        text = (pending + " " + line.strip()).strip() if pending else line.strip()
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        pending = ""
        text = text[2:] if text.startswith("$ ") else text
        if not re.match(r"^(duma|echo|printf)\b", text):
            continue
        if "#" in text:
            text = text[: _comment_start(text)].rstrip()
        commands.append(re.sub(r"\s+", " ", text))
    return commands


def _comment_start(text: str) -> int:
    """Where a shell comment starts (a # after white space, outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and i > 0 and text[i - 1].isspace():
            return i
    return len(text)


def test_every_readme_command_is_walked():
    listed = readme_commands()
    missing = [c for c in listed if c not in README_COMMANDS]
    stale = [c for c in README_COMMANDS if c not in listed]
    assert not missing, f"README commands this test does not run yet (add them): {missing}"
    assert not stale, f"commands here that the README no longer has: {stale}"


@pytest.fixture
def workspace(tmp_path, tiny_model, monkeypatch):
    """A folder with the files the README's commands name, as the current directory."""
    root = tmp_path / "work"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "examples", root / "examples")
    (root / "agents").symlink_to(REPO / "agents")  # the shipped minds, read (README: --slow-adapter agents/...)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared.resolve())
    sample = REPO / "configs" / "examples" / "data" / "belle_tiny.jsonl"
    for name in ("data.jsonl", "in.jsonl"):
        shutil.copy(sample, root / name)
    shutil.copytree(tiny_model, root / "path" / "to" / "hf-model-folder")
    (root / "SET").write_text("\n".join(json.dumps(item) for item in [
        {"id": "a", "question": "What is 2+3?", "std_answer": "5", "class": "math"},
        {"id": "b", "question": "What is 10 minus 4?", "std_answer": "6", "class": "math"},
    ]) + "\n", encoding="utf-8")
    (root / "corpus.txt").write_text((REPO / "examples" / "knowledge" / "products.md").read_text(), encoding="utf-8")
    (root / "duma.yaml").write_text("# my duma settings\nagent:\n  max_slow_steps: 6\n", encoding="utf-8")
    run = (root / "configs" / "examples" / "sft_tiny.yaml").read_text(encoding="utf-8")
    (root / "RUN.yaml").write_text(run.replace("output_dir: runs/sft-tiny", "output_dir: runs/my-run"),
                                   encoding="utf-8")
    lora = (root / "configs" / "examples" / "lora_embedded.yaml").read_text(encoding="utf-8")
    (root / "configs" / "examples" / "lora_embedded.yaml").write_text(
        lora.replace("output_dir: runs/lora-embedded", "output_dir: runs/my-lora"), encoding="utf-8")
    monkeypatch.chdir(root)
    monkeypatch.setenv("DUMA_TODAY", "2026-12-02")
    return root


def _conversation_id() -> str:
    code, out, _ = run_cli(["logs", "list", "--json"])
    assert code == 0
    return json.loads(out)[0]["id"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_readme_commands_run_as_written(workspace):
    """In README order: later commands use what earlier ones wrote (runs/, the log)."""
    ran = []
    for command in readme_commands():
        replacement, stdin = README_COMMANDS[command]
        line = replacement or command
        args = shlex.split(line)[1:]
        if "ID" in args:
            args[args.index("ID")] = _conversation_id()
        if "--backend llamacpp" in command and importlib.util.find_spec("llama_cpp") is None:
            continue  # an optional extra that builds from source
        if command.startswith("duma train RUN.yaml --resume"):
            code, _, err = run_cli(["train", "RUN.yaml"])  # the run to resume
            assert code == 0, err[-2000:]
        code, out, err = run_cli(args, input=stdin)
        assert code == 0, f"{line!r} exited {code}:\n{err[-2000:]}"
        ran.append(line)
    assert (workspace / "runs" / "merged").is_dir() and (workspace / "lengths.png").is_file()
    assert len((workspace / "fast-pairs.jsonl").read_text().splitlines()) >= 1  # the ratings became a pair
    assert (workspace / "my-minds" / "fast" / "adapter_model.safetensors").is_file()
    assert (workspace / "eval-results" / "routing").is_dir()
