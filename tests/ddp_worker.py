"""One rank of tests/test_distributed.py's pytorch_ddp check (run as a script, one process per rank).

The student, and the criterion when it has parameters, are wrapped as fairseq's ``--ddp-backend pytorch_ddp`` wraps
them on a GPU (``DistributedFairseqModel``: torch's ``DistributedDataParallel`` with fairseq's defaults, inside its
``ModuleProxyWrapper``), less ``device_ids``/``output_device``, which torch refuses for CPU modules. Each rank trains
on its share of every batch and scales gradients as fairseq's trainer does (DDP averages over ranks; the trainer then
multiplies by world size / the batch's total sample size). Writes {config: {"losses", "moved", "params"}} with
torch.save to OUT.

    python3 tests/ddp_worker.py RANK WORLD PORT DATA TEACHER STUDENT OUT
"""

import sys

import torch
import torch.distributed as dist

STEPS, BATCH = 3, 12
# name -> (student: "lowrank" (the makd-init checkpoint) or "narrow" (a dense student of half the width, so the
# criterion owns a projection into the teacher's width), criterion settings, find_unused_parameters)
CONFIGS = {
    "lowrank, attention and model terms at weight 0": ("lowrank", dict(attn_weight=0.0, model_weight=0.0), False),
    "narrow dense, criterion with parameters": ("narrow", dict(matrix_weight=0.0, attn_weight=0.0,
                                                               layer_layers="all"), False),
    # the matrix aspect alone (shallow layers): the deep layers' and the output's parameters get no gradient
    "lowrank, matrix aspect only": ("lowrank", dict(ce_weight=0.0, model_weight=0.0, layer_weight=0.0), False),
}


def main(rank, world, port, data, teacher, student, out):
    import makd_fairseq  # noqa: F401
    from fairseq import checkpoint_utils, utils
    from fairseq.distributed import ModuleProxyWrapper
    from torch.nn.parallel import DistributedDataParallel

    from makd_fairseq.checkpoint import load_checkpoint, model_args
    from makd_fairseq.criterions.makd import MakdConfig, MakdCriterion
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig, MakdTranslationTask

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def wrap(module, find_unused):
        if world == 1:
            return module
        # fairseq's DistributedFairseqModel for pytorch_ddp, with fairseq's defaults for the flags
        return ModuleProxyWrapper(DistributedDataParallel(
            module, broadcast_buffers=False, bucket_cap_mb=25, find_unused_parameters=find_unused,
            gradient_as_bucket_view=False))

    results = {}
    for name, (kind, settings, find_unused) in CONFIGS.items():
        task = MakdTranslationTask.setup_task(MakdTranslationConfig(
            data=data, teacher_path=teacher, source_lang="en", target_lang="de", train_subset="train",
            dataset_impl=None, required_seq_len_multiple=1))
        task.load_dataset("valid")
        torch.manual_seed(1)
        if kind == "lowrank":
            model = checkpoint_utils.load_model_ensemble([student], arg_overrides={"dropout": 0.0}, task=task)[0][0]
        else:
            args = model_args(load_checkpoint(teacher))
            args.dropout, args.encoder_embed_dim, args.decoder_embed_dim = 0.0, 32, 32
            args.decoder_input_dim = args.decoder_output_dim = 32
            args.encoder_ffn_embed_dim = args.decoder_ffn_embed_dim = 64
            model = task.build_model(args)
        criterion = MakdCriterion.build_criterion(MakdConfig(sentence_avg=False, **settings), task)
        model, criterion = model.train(), criterion.train()
        params = list(model.parameters()) + list(criterion.parameters())
        initial = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.5)
        wrapped_model = wrap(model, find_unused)
        wrapped_criterion = wrap(criterion, find_unused) if utils.has_parameters(criterion) else criterion
        losses = []
        for step in range(STEPS):
            ids = list(range(step * BATCH, (step + 1) * BATCH))
            share = ids[rank * BATCH // world:(rank + 1) * BATCH // world]
            optimizer.zero_grad()
            loss, sample_size, _ = wrapped_criterion(wrapped_model, task.dataset("valid").collater(
                [task.dataset("valid")[i] for i in share]))
            loss.backward()
            totals = torch.tensor([float(sample_size), loss.item()], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(totals)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(world / totals[0].item())
            optimizer.step()
            losses.append(totals[1].item() / totals[0].item())
        results[name] = {"losses": losses, "moved": max((p - p0).abs().max().item() for p, p0 in zip(params, initial)),
                         "params": {n: p.detach().clone() for n, p in [*model.named_parameters(),
                                                                       *criterion.named_parameters()]}}
    if rank == 0:
        torch.save(results, out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, port = map(int, sys.argv[1:4])
    main(rank, world, port, *sys.argv[4:8])
