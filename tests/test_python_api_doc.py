"""docs/python_api.md runs as it stands: its Python blocks, in order, from the repository root, on the real
MovieLens-100K copy (train, read the data, evaluate, serve, and a user's own registered model). They run in a
child process, so the model the guide registers stays out of this session's registry."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_python_guide_runs_as_written(shared_data, tmp_path):
    text = (REPO / "docs" / "python_api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    # train, data, evaluate, serve (an index, an item-item model), own model: a block lost to a typo is noticed
    assert len(blocks) == 6
    script = tmp_path / "guide.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = {**os.environ, "RECSYS_SHARED_DATA": str(shared_data)}  # RECSYS_HOME: this test's own folder
    out = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # the guide's own asserts compared evaluate_model with the logged test metrics; here, what it printed
    runs = [line for line in lines if re.fullmatch(r"[0-9a-f]{32} .*", line)]
    assert len(runs) == 2  # the LightGCN run and the user's model's run, each with its id
    (ease,) = [line for line in lines if line.startswith("EASE: ")]  # three titles, then the neighbour's
    assert ease.count("', '") + ease.count('", "') == 2 and ease.split("| most like Star Wars: ")[1]
    assert "942 1447" in lines  # MovieLens-100K's users and items with ratings >= 4
    recs = [line for line in lines if re.fullmatch(r"\d+ .+ -?\d+\.\d+", line)]
    assert len(recs) == 3  # user 1's three recommendations: id, title, score
