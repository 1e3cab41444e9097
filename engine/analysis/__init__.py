"""What finished runs mean: the run-directory reader (runs), the savings math (savings), scaling
fits (scaling), CORE (core_eval) and the ladder report (report, with its scaling and CORE sections
in report_scaling), the per-stage profile of finished runs (profile_report) and the study's
aggregation over seeds and recipes (study), the noise of a paired val-loss difference
(paired_eval)."""
