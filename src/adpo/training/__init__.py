"""Training: pairs -> cached reference log-probs -> DeepSpeed engine -> policy.

    pairs_data   read/validate pairs.jsonl, tokenise (adpo.data.tokenize.encode_pair), collate PairBatch (make_batch)
    reference    per-token reference log-probs, computed once (sharded over ranks) and cached beside the pairs
    engine       process group, DeepSpeed config, model loading, LoRA, optimizer + schedule (build_engine)
    step         MethodSpec, compute_loss, train_step: one optimizer step, reusable outside the stage
    schedule     the data order: a function of (seed, step), independent of resumes and of the rank layout
    checkpoint   resumable DeepSpeed checkpoints; the final transformers-format model (ZeRO-3 consolidated, LoRA merged)
    loop         train(cfg): the whole run, in one readable function
"""
