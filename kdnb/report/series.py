"""The notebook series as data: which notebook trains which run, the configurations' labels, and the
paper's reported numbers (quoted, never computed here)."""

from __future__ import annotations

from ..engine.config import STUDENT_CONFIGS, TEACHER

# The numbered notebooks, in the order the pipeline runs them.
NOTEBOOKS: tuple[str, ...] = (
    "00_setup_and_data", "01_train_teacher", "02_baseline", "03_kd", "04_kd_fa", "05_kd_at",
    "06_kd_fa_at", "07_masks_and_attention", "08_results", "09_mask_ablation",
)
# The notebook that trains each configuration, and the other way round for the students.
NOTEBOOK_FOR: dict[str, str] = {
    TEACHER: "01_train_teacher", "baseline": "02_baseline", "kd": "03_kd", "kd_fa": "04_kd_fa",
    "kd_at": "05_kd_at", "kd_fa_at": "06_kd_fa_at",
}
STUDENT_NOTEBOOKS: dict[str, str] = {NOTEBOOK_FOR[c]: c for c in STUDENT_CONFIGS}

class _Labels(dict):
    """Configuration → label; any other run (a preset a term brought, a named variant) is its own label."""

    def __missing__(self, key: str) -> str:
        return key


LABELS: dict[str, str] = _Labels({
    TEACHER: "teacher", "baseline": "baseline", "kd": "KD", "kd_fa": "KD+FA", "kd_at": "KD+AT",
    "kd_fa_at": "KD+FA+AT", "dkd": "DKD", "dkd_fa_at": "DKD+FA+AT",
})
# One colour per configuration in every figure (Okabe-Ito, readable by colour-blind readers), keyed by label.
COLOURS: dict[str, str] = {
    "teacher": "#555555", "baseline": "#E69F00", "KD": "#56B4E9", "KD+FA": "#009E73", "KD+AT": "#CC79A7",
    "KD+FA+AT": "#D55E00",
}
# The ablation's mask families (09): Grad-CAM in KD+FA+AT's colour, the controls in greys and blue.
MASK_COLOURS: dict[str, str] = {"none": "#000000", "random_matched": "#0072B2", "random": "#7F7F7F",
                                "gradcam": COLOURS["KD+FA+AT"]}
# The paper's Table (best test accuracy over epochs, one run, %). Reported numbers, not ours.
PAPER_ACCURACY: dict[str, float] = {
    "baseline": 80.56, "kd": 83.64, "kd_fa": 82.78, "kd_at": 83.53, "kd_fa_at": 83.77,
}
PAPER_TEACHER_ACCURACY = 84.61
# The paper's techniques, each added to KD alone; RQ1 asks whether their combination (kd_fa_at) beats each.
SINGLE_TECHNIQUES: tuple[str, ...] = ("kd", "kd_fa", "kd_at")
