"""Each rendered offline task YAML carries the prompt fields of the lm-eval standard task it mirrors.

The reference is lm-eval's own YAML files in the installed package, read here (not our templates)."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
import yaml

from coloc_ray.evaluation import data
from coloc_ray.evaluation.offline import load_items, render_tasks
from coloc_ray.evaluation.registry import BENCHMARKS

STD = Path(lm_eval.__file__).parent / "tasks"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _yaml(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    for name in ("arc_challenge", "mmlu", "gpqa", "math", "mgsm"):
        items, shots = load_items(BENCHMARKS[name], 30, 0)
        render_tasks(BENCHMARKS[name], items, shots, d / name, max_gen_toks=64)
    return d


def test_no_template_field_or_repo_path_left(rendered):
    files = sorted(rendered.rglob("*.yaml"))
    # Not vacuous: every rendered benchmark has task files (an empty glob would pass the loop).
    assert {f.relative_to(rendered).parts[0] for f in files} == {"arc_challenge", "mmlu", "gpqa", "math", "mgsm"}
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert "${" not in text
        cfg = _yaml(f)
        for split, path in cfg["dataset_kwargs"]["data_files"].items():
            assert Path(path).is_file() and Path(path).parent == f.parent, (f, split)


def test_arc_mirrors_standard(rendered):
    std, ours = _yaml(STD / "arc" / "arc_easy.yaml"), _yaml(rendered / "arc_challenge" / "arc_challenge.yaml")
    for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "output_type", "metric_list"):
        assert ours[k] == std[k], k
    assert ours["num_fewshot"] == 25 and ours["training_split"] == "train"


def test_mmlu_mirrors_standard_for_every_rendered_subject(rendered):
    std = _yaml(STD / "mmlu" / "default" / "_default_template_yaml")
    files = sorted((rendered / "mmlu").glob("mmlu_*.yaml"))
    assert len(files) >= 20
    for f in files:
        ours = _yaml(f)
        subject = f.stem[len("mmlu_"):]
        sub = _yaml(STD / "mmlu" / "default" / f"mmlu_{subject}.yaml")
        assert ours["description"] == sub["description"], subject
        for k in ("doc_to_text", "doc_to_choice", "doc_to_target", "fewshot_config", "output_type"):
            assert ours[k] == std[k], (subject, k)
        assert ours["num_fewshot"] == 5


def test_gpqa_and_math_mirror_standard(rendered):
    std = _yaml(STD / "gpqa" / "zeroshot" / "_gpqa_zeroshot_yaml")
    ours = _yaml(rendered / "gpqa" / "gpqa.yaml")
    for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "num_fewshot", "metric_list"):
        assert ours[k] == std[k], k
    std = _yaml(STD / "minerva_math" / "minerva_math_algebra.yaml")
    ours = _yaml(rendered / "math" / "math.yaml")
    assert ours["generation_kwargs"]["until"] == std["generation_kwargs"]["until"]
    assert ours["doc_to_target"] == std["doc_to_target"] and ours["num_fewshot"] == std["num_fewshot"] == 4


def test_math_fewshot_and_normalisation_match_lm_eval():
    # lm-eval's minerva utils cannot be imported offline (math_verify), so compare against its source text.
    from coloc_ray.evaluation.tasks import utils

    src = (STD / "minerva_math" / "utils.py").read_text()
    for shot in utils.MATH_FEWSHOT:
        assert repr(shot["problem"])[1:-1].replace("\\\\", "\\") in src.replace("\\\\", "\\")
    assert utils.math_answer("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert utils.math_answer("Final Answer: The final answer is $16$. I hope it is correct.") == "16"
    assert utils.math_answer("no answer here") == "[invalidanswer]"


def test_mgsm_mirrors_standard_per_language(rendered):
    base = _yaml(STD / "mgsm" / "direct" / "direct_yaml")
    for lang in data.MGSM_LANGS:
        f = rendered / "mgsm" / f"mgsm_{lang}.yaml"
        if not f.exists():
            continue
        std, ours = _yaml(STD / "mgsm" / "direct" / f"mgsm_direct_{lang}.yaml"), _yaml(f)
        assert ours["doc_to_text"] == std["doc_to_text"] and ours["doc_to_target"] == std["doc_to_target"], lang
        assert ours["generation_kwargs"]["until"] == std["generation_kwargs"]["until"], lang
        assert ours["target_delimiter"] == base["target_delimiter"] == ""
        assert [x["name"] for x in ours["filter_list"]] == [x["name"] for x in base["filter_list"]]
        assert ours["filter_list"][1]["filter"] == base["filter_list"][1]["filter"]


def test_math_item_row_holds_the_compared_answer():
    from coloc_ray.evaluation import harness

    s = {"doc": {"item_id": "math/1", "answer": "16"}, "doc_id": 0, "target": "16", "filter": "none",
         "arguments": [("Problem:\nx\n\nSolution:", {})], "filtered_resps": ["so $\\boxed{16}$."],
         "resps": [["so $\\boxed{16}$."]], "exact_match": 1}
    row = harness.sample_to_item(s, BENCHMARKS["math"], "coloc_math")
    assert row["prediction"] == "16" and row["generation"] == "so $\\boxed{16}$." and row["correct"]
    assert row["prompt_hash"] == harness.prompt_hash("Problem:\nx\n\nSolution:")
