"""The README's Python example runs as written (one import line), on a small trained run."""

import re
from pathlib import Path

from unmask.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_runs(tmp_path, corpus_file, tiny_overrides):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet",
                 "--max-steps", "2", *tiny_overrides]) == 0
    block = re.search(r"## Usage: Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert block.count("import") == 1  # the example needs one import line
    code = block.replace("runs/demo/mdlm", str(run)).replace("runs/edited", str(tmp_path / "edited"))
    names: dict = {}
    exec(compile(code, str(README), "exec"), names)  # noqa: S102 - the README's own example
    assert len(names["texts"]) == 2 and names["texts"][0].lower().startswith("romeo")  # the char tokenizer lowercases
    assert names["bound"].shape == (1,) and names["report"].likelihood.tokens > 0
    assert (tmp_path / "edited" / "model.json").is_file()
