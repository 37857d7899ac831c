"""The transformers Trainer adapter runs real ZO steps through Trainer's own loop."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

import zoft
from zoft.integrations.hf_trainer import ZOTrainerMixin
from zoft.models import load_model


class ZOTrainer(ZOTrainerMixin, Trainer):
    pass


def test_trainer_takes_zo_steps(tmp_path):
    model, tok = load_model("tiny-llama")
    texts = ["a good film", "a bad film", "great fun", "dull and slow"] * 4
    data = [dict(input_ids=torch.tensor(tok(t)["input_ids"]), labels=torch.tensor(tok(t)["input_ids"]))
            for t in texts]
    collate = lambda rows: {k: torch.nn.utils.rnn.pad_sequence([r[k] for r in rows], batch_first=True,
                                                               padding_value=-100 if k == "labels" else 0)
                            for k in rows[0]}
    opt = zoft.make_optimizer("zo-sgd", model.parameters(), lr=1e-3, eps=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, logging_steps=1, save_strategy="no")
    trainer = ZOTrainer(model=model, args=args, train_dataset=data, data_collator=collate, optimizers=(opt, None))
    result = trainer.train()
    assert opt.steps_taken == 3 and opt.forward_passes == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(torch.tensor(result.training_loss))
