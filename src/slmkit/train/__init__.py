"""Training: `slmkit.train.loop.train(recipe, run)` and its parts. Batches, loss and model come from the
run's objective (`slmkit.objectives`); validation uses `slmkit.eval.loss`.

    loop.py        the step loop (accumulation, autocast, skip of non-finite steps, eval, checkpoints)
    optim.py       optimizer presets (llama, phi-1_5) and no-decay parameter groups
    schedule.py    cosine | constant | linear | wsd learning-rate schedules
    distributed.py process groups, DDP / FSDP2 wrapping, collectives
    checkpoint.py  atomic ckpt/step-NNNNNN folders (HF folder + optimizer or DCP shards), ckpt/latest
    metrics.py     progress bar, metrics.jsonl, TensorBoard
    mfu.py         peak FLOP/s (datasheet or measured) and MFU
    faults.py      stop signals, bad-step counting, test-only fault injection
    rng.py         seeding and RNG snapshots
"""
