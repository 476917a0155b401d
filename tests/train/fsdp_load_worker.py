"""Run under torchrun by test_distributed.py: an empty model sharded, then filled from rank 0.

For each model directory given, rank 0 alone may read weights (every other rank's
``from_pretrained`` raises), and the sharded model must hold exactly the checkpoint's
tensors, the buffers a normal load computes, the same tie between embeddings and head,
and give the same logits."""
import sys

import torch
from transformers import AutoModelForCausalLM

from forgetbench.train import distributed


def main(*model_dirs: str) -> None:
    d = distributed.init("cpu")
    real_load = AutoModelForCausalLM.from_pretrained
    for model_dir in model_dirs:
        reference = real_load(model_dir, dtype=torch.float32)
        if not d.main:
            def refuse(*args, **kwargs):
                raise AssertionError("only rank 0 reads the weights")
            AutoModelForCausalLM.from_pretrained = refuse
        model = distributed.empty_model(model_dir)
        distributed.wrap_fsdp(model, d, bf16=False)
        distributed.load_full_weights(model, model_dir, d)
        AutoModelForCausalLM.from_pretrained = real_load
        head, table = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        assert (head is table) == (reference.get_output_embeddings().weight is
                                   reference.get_input_embeddings().weight), model_dir
        assert len(list(model.parameters())) == len(list(reference.parameters())), model_dir
        for (name, b), (_, ref) in zip(model.named_buffers(), reference.named_buffers()):
            torch.testing.assert_close(b, ref, msg=lambda m: f"{model_dir} buffer {name}: {m}")
        ids = torch.arange(12).reshape(2, 6)
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        full = distributed.full_state_dict(model, d)
        if d.main:
            expected = reference.state_dict()
            assert full.keys() == expected.keys(), model_dir
            for key, value in expected.items():
                assert torch.equal(full[key], value), (model_dir, key)
    distributed.shutdown_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
