"""Training: pairs -> cached reference log-probs -> DeepSpeed engine -> policy.

    pairs_data   read/validate pairs.jsonl, tokenise (adpo.data.tokenize.encode_pair), collate PairBatch (make_batch)
    pairs_checks degenerate and repeated pairs left out and counted (none left: refused), truncation counted
    reference    per-token reference log-probs, computed once (sharded over ranks) and cached beside the pairs
    engine       process group, DeepSpeed config, LoRA applied (adpo.models builds its config), optimizer + schedule
    step         MethodSpec, compute_loss, train_step: one optimizer step, reusable outside the stage
    schedule     the data order: a function of (seed, step), independent of resumes and of the rank layout
    checkpoint   resumable DeepSpeed checkpoints; the final transformers-format model (ZeRO-3 consolidated, LoRA merged)
    loop         setup_training(cfg): everything before the first step (the benchmarks use it too);
                 train(cfg): the whole run, its loop in one readable function
"""
