"""The measuring side of the flow: evaluation, statistics and the tables.

Uses the core (`adpo`); never imports `adpo_data_prep`.
"""
