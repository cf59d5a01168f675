"""scripts/results_table.py: the README's table is read from an experiment's results.csv, not re-scored."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_each_arm_gets_its_class_averaged_mean_and_its_difference_to_the_published_arm(tmp_path):
    folder = tmp_path / "experiments" / "ood"
    folder.mkdir(parents=True)
    rows = ["evaluation,arm,subject,class,dice,precision,recall"]
    for k in range(6):  # six volumes; the extension is 0.1 above the published arm on every one
        for arm, base in (("S_n-ood", 0.5), ("SF_n-ood", 0.6)):
            rows += [f"n-ood,{arm},siteB_test_{k:03d},gm,{base + 0.01 * k},,",
                     f"n-ood,{arm},siteB_test_{k:03d},wm,{base + 0.01 * k},,",
                     f"n-ood,{arm},siteB_test_{k:03d},csf,,,"]  # an undefined class is skipped, not a zero
    (folder / "results.csv").write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "results_table.py"), "--workdir", str(tmp_path),
                             "--experiments", "ood"], capture_output=True, text=True, check=True, cwd=REPO)
    lines = {line.split(" | ")[1]: line for line in result.stdout.splitlines() if line.startswith("| n-ood")}
    assert "| 0.525 [" in lines["S_n-ood"] and "published brainSPADE" in lines["S_n-ood"]
    assert "| 0.625 [" in lines["SF_n-ood"] and "| +0.100 [+0.100, +0.100] |" in lines["SF_n-ood"]
    assert "extension" in lines["SF_n-ood"]


def test_the_wide_table_has_one_row_per_target_site_and_says_which_arms_were_not_trained(tmp_path):
    folder = tmp_path / "experiments" / "ood"
    folder.mkdir(parents=True)
    rows = ["evaluation,arm,subject,class,dice,precision,recall"]
    for k in range(4):
        rows += [f"n-ood,S_n-ood,siteB_test_{k:03d},gm,0.5,,", f"n-ood,R_iod,siteB_test_{k:03d},gm,0.7,,",
                 f"x-ood,S_x-ood,siteN_test_{k:03d},gm,0.4,,"]
    (folder / "results.csv").write_text("\n".join(rows) + "\n")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "results_table.py"), "--workdir", str(tmp_path),
                             "--wide"], capture_output=True, text=True, check=True, cwd=REPO)
    n_ood, x_ood = (next(line.split(" | ") for line in result.stdout.splitlines() if line.startswith(f"| {name}"))
                    for name in ("n-ood", "x-ood"))
    assert n_ood[1].startswith("0.700") and n_ood[3].startswith("0.500") and n_ood[4] == "not trained"
    assert x_ood[1] == "not trained" and x_ood[3].startswith("0.400")
