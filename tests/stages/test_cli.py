"""The command line: command list, help, override checking, unbuilt commands."""

from __future__ import annotations

from conftest import run_cli

from brainspade.cli import COMMANDS, expand_short_forms

ALL_COMMANDS = [
    "make-phantom", "prepare-data", "train-label-vae", "train-label-ldm", "sample-labels",
    "train-modisc", "train-image-generator", "sample", "sample-randomised", "run-experiment",
    "evaluate-generators", "make-manifest", "segment", "demo",
]


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()]
    assert [c for c in listed if c in ALL_COMMANDS] == ALL_COMMANDS
    assert set(COMMANDS) == set(ALL_COMMANDS)


def test_own_data_keys_are_checked_before_work(capsys, tmp_path):
    """A bad label format or registration mode, or segment without its model, fails in one line naming the key."""
    for args, key in ((["prepare-data", "data.label_format=aseg"], "label_format"),
                      (["prepare-data", "data.register=rigid"], "register"),
                      (["segment", "input=scan.nii.gz"], "model")):
        code, _, err = run_cli(capsys, *args, f"workdir={tmp_path}")
        assert code == 2 and len(err.strip().splitlines()) == 1 and key in err, err
    assert not (tmp_path / "phantom").exists()


def test_command_help_shows_its_keys(capsys):
    code, out, _ = run_cli(capsys, "prepare-data", "--help")
    assert code == 0
    assert "workdir" in out and "profile" in out and "min_brain_fraction" in out


def test_unknown_key_fails_in_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "make-phantom", f"workdir={tmp_path}", "no_such_key=1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "no_such_key" in err
    assert not (tmp_path / "phantom").exists()


def test_unknown_command_and_bad_profile_fail(capsys, tmp_path):
    assert run_cli(capsys, "frobnicate")[0] == 2
    code, _, err = run_cli(capsys, "make-phantom", f"workdir={tmp_path}", "profile=huge")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_folder_data_needs_a_root(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prepare-data", f"workdir={tmp_path}", "data=folder")
    assert code == 2
    assert "data.root" in err and len(err.strip().splitlines()) == 1


def test_short_forms_become_overrides():
    assert expand_short_forms("sample", ["--n", "20000", "seed=3"]) == ["n=20000", "seed=3"]
    assert expand_short_forms("sample", ["--n=5"]) == ["n=5"]
    assert expand_short_forms("run-experiment", ["ood", "profile=tiny"]) == ["experiment=ood", "profile=tiny"]
    assert expand_short_forms("run-experiment", ["--cfg", "job"]) == ["--cfg", "job"]


def test_cfg_job_prints_the_resolved_config(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prepare-data", f"workdir={tmp_path}", "profile=tiny", "--cfg", "job")
    assert code == 0
    assert "size:" in out and "- 48" in out


def test_every_profile_passes_every_commands_checks_and_bench_is_the_cpu_profile_made_longer(tmp_path):
    from hydra import compose, initialize_config_dir

    from brainspade.cli import CONFIG_DIR
    from brainspade.segmentation.arms import ArmSpec
    from brainspade.stages.config import check_config, section

    profiles = sorted(path.stem for path in (CONFIG_DIR / "profile").glob("*.yaml"))
    assert profiles == ["bench", "cpu", "paper", "tiny"]
    configs = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for profile in profiles:
            for command in COMMANDS:
                extra = {"segment": ["model=R_iod", "input=scan.nii.gz"], "make-manifest": ["bids_root=."]}
                cfg = compose(config_name=command, overrides=[f"profile={profile}", f"workdir={tmp_path}",
                                                                  *extra.get(command, [])])
                check_config(cfg)  # any bad value in a profile fails here
            configs[profile] = compose(config_name="demo", overrides=[f"profile={profile}"])
    cpu, bench = configs["cpu"], configs["bench"]
    assert bench.profile_name == "bench" and bench.slices.size == cpu.slices.size
    assert bench.image_generator.generator == cpu.image_generator.generator  # the same networks, trained longer
    assert bench.image_generator.steps > cpu.image_generator.steps
    assert bench.label_vae.steps >= 1500 and bench.label_ldm.steps >= 3000 and bench.experiments.n_synthetic >= 2000
    assert min(counts[-1] for counts in bench.phantom.subjects_per_site.values()) >= 20  # the last count: test
    assert bench.segmentation.epochs > cpu.segmentation.epochs
    # `sample` and the published arms are the paper's method in every profile; the cpu profile's extension arms (SF)
    # put its fitted site model on, and its ablation arms (F) render with it alone.
    for name, profile in configs.items():
        look = section(profile, "sampling").site_look
        assert not look.enabled, name
        arms = {arm: ArmSpec.from_dict(arm, spec).synthetic for arm, spec in profile.experiments.arms.items()}
        published = {arm for arm, source in arms.items() if source and source.synthesis == "published"}
        assert published >= {"S_iod", "S_n-ood", "S_f-ood", "S_les", "H_les"}, name
        assert not any(arms[arm].site_look(look).enabled for arm in published)
    look = section(cpu, "sampling").site_look
    cpu_arms = {arm: ArmSpec.from_dict(arm, spec).synthetic for arm, spec in cpu.experiments.arms.items()}
    extension = cpu_arms["SF_n-ood"].site_look(look)
    assert extension.enabled and extension.method == "site_model" and extension.generator_texture == 1.0
    assert extension.reference_images == look.reference_images == 64
    ablation = cpu_arms["F_n-ood"].site_look(look)
    assert ablation.enabled and ablation.method == "site_model" and ablation.generator_texture == 0
    # The experiments compare the published arm with the extension and its ablation on siteB (profile=bench trains
    # them; the cpu demo skips them, test_arms.py).
    n_ood = next(node for node in cpu.experiments.evaluations.ood if node.name == "n-ood")
    assert {"S_n-ood", "SF_n-ood", "F_n-ood"} <= set(n_ood.arms)
    assert {(r.better, r.worse) for r in n_ood.relations} >= {("SF_n-ood", "S_n-ood"), ("SF_n-ood", "F_n-ood")}


def test_lesion_arms_train_on_their_own_nnunet_keys_checked_before_work(capsys, tmp_path):
    from hydra import compose, initialize_config_dir

    from brainspade.cli import CONFIG_DIR
    from brainspade.stages.config import arm_segmentation, experiment_plan, section

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="run-experiment", overrides=["profile=cpu", "experiments.lesion_segmentation.epochs=7",
                                                                   "experiments.skip_arms=[]"])
    _, arms = experiment_plan(section(cfg, "experiments"), None)
    epochs = {name: arm_segmentation(cfg, arm).epochs for name, arm in arms.items()}
    assert {name for name, value in epochs.items() if value == 7} == {"R_les", "S_les", "H_les"}
    randomised = cfg.experiments.randomised_segmentation  # the D arms' keys go on top of their own
    assert epochs["D"] == epochs["D_les"] == randomised.epochs != cfg.segmentation.epochs
    assert {value for name, value in epochs.items() if not name.endswith("_les") and name != "D"} == {cfg.segmentation.epochs}
    weights = arm_segmentation(cfg, arms["D_les"]).class_weights  # merged key by key: the lesion arms' tumour weight stays
    assert weights == {**cfg.experiments.lesion_segmentation.class_weights, **randomised.class_weights}
    assert arm_segmentation(cfg, arms["D"]).class_weights == dict(randomised.class_weights)
    code, _, err = run_cli(capsys, "run-experiment", "lesion", f"workdir={tmp_path}", "profile=cpu",
                           "experiments.lesion_segmentation.epochs=0")
    assert code == 2 and "experiments.arms.R_les.segmentation.epochs=0: must be >= 1" in err
    assert err.count("\n") == 1 and not (tmp_path / "segmentation").exists()
