"""The README's example runs as written, so it cannot rot."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["y"].shape == scope["x"].shape and scope["k"].shape == (1, 128, 4096)
    assert scope["y_t"].shape == (8, 128) and scope["final_state"].shape == (8, 128, 32)
