"""What finished runs mean: the run-directory reader (runs), the savings math (savings), scaling
fits (scaling), CORE (core_eval) and the ladder report (report, with its scaling and CORE sections
in report_scaling). profiling/report.py, the per-stage profile, sits in this layer too."""
