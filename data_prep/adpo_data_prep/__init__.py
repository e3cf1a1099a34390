"""The data side of the flow: prepare, the toy task and its SFT, sample, pairing, and the cDPO criticality weights.

Uses the core (`adpo`); never imports `adpo_eval`.
"""
