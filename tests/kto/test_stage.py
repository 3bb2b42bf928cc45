"""lasa_jax.kto.stage: the stage contract on a finished run (StageResult, report lines, settings errors)."""
import shutil

import pytest

from lasa_jax.kto import stage as kto_stage
from tests.kto.kto_runs import TOTAL_STEPS, kto_config, one_device_mesh

pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_kto_stage_contract_on_a_finished_run(llama_dir, reference_run, tmp_path):
    """kto_stage.run on a finished workdir: no step, StageResult with the export; report_lines as the pipeline's."""
    workdir = tmp_path / "kto"
    shutil.copytree(reference_run[0], workdir)
    settings = kto_stage.settings(kto_config(llama_dir))
    assert settings.reference.mode == "online" and settings.train.length_buckets == (64, 128, 256)
    result = kto_stage.run(settings, str(workdir), one_device_mesh())
    assert (result.stage, result.status, result.completed) == ("kto", "completed", True)
    assert result.details.step == TOTAL_STEPS and result.details.resumed_from == TOTAL_STEPS
    assert result.outputs["hf_export"] == str(workdir / "hf_export")
    assert kto_stage.report_lines(str(workdir)) == [
        f"KTO completed at step {TOTAL_STEPS} of {TOTAL_STEPS}.",
        "- [kto/metrics.jsonl](kto/metrics.jsonl), aligned model [kto/hf_export](kto/hf_export)"]
    assert kto_stage.report_lines(str(tmp_path / "none")) == [
        "- none/metrics.jsonl (missing), aligned model none/hf_export (missing)"]
    with pytest.raises(ValueError, match="config field train.batch_size must be >= 2"):
        kto_stage.settings(kto_config(llama_dir, **{"train.batch_size": 1}))
