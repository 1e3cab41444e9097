"""What finished runs mean: the savings math (savings), scaling fits (scaling), CORE (core_eval) and the ladder report (report, report_scaling)."""
