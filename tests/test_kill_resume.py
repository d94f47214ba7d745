"""scripts/kill_resume.py in small: a few SIGKILLs inside steps, checkpoint writes and validations,
a resume after each, and the final checkpoint equal bit for bit to an uninterrupted run's."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_three_kills_and_resumes_end_bit_identical_to_an_uninterrupted_run(repo_root, tmp_path):
    proc = subprocess.run([sys.executable, "scripts/kill_resume.py", "--kills", "3", "--epochs", "2",
                           "--utterances", "16", "--seed", "3", "--phases", "step,save,validate",
                           "--workdir", str(tmp_path)],
                          cwd=repo_root, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    assert "final weights identical" in proc.stdout
    assert '"final_identical": true' in proc.stdout and '"epoch_train_loss_identical": true' in proc.stdout
    kills = [line for line in proc.stdout.splitlines() if line.startswith("kill ")]
    # Each kill landed (none was lost because the run finished first) and no resumed run wrote
    # a checkpoint that differs from the uninterrupted run's.
    assert len(kills) == 3, proc.stdout
    assert not any("DIFFERS" in line for line in kills), proc.stdout
