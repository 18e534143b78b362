"""gen.core.training: the torch training stack (torch is imported by its modules, never by gen.core's contracts).

    loop.py           the training loop behind `gen train`
    config.py         its options (TrainConfig) and the learning-rate schedule
    checkpoint.py     checkpoints: safetensors weights, JSON config, exact resume
    devices.py        the device and the autocast precision
    distributed.py    torchrun / torch.distributed
    torch_backend.py  a torch model as a backend of gen.core.generation (`gen sample`)
    nanogpt.py        nanoGPT checkpoints in and out
    prepare.py        `gen prepare`: a corpus of any size into token shards (no torch)
"""
