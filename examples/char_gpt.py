"""A tiny character-level GPT trained on a stream of text shards, resumable anywhere.

The text is a folder of JSON-lines shards (``part-000.jsonl``, ...), each line one window of
``BLOCK + 1`` characters; the example writes a small corpus the first time (sentences made
from a few words with a seeded generator, so it runs anywhere without a download). Hugging
Face ``datasets`` reads the shards as a stream (``streaming=True``), helios splits it among
the processes and loader workers, and the position in it (every worker's, with the
dataset's own ``state_dict``) goes into every checkpoint: kill the run at any moment, run
the same command again, and it continues with the next batch it would have trained on,
ending with the same weights as a run never interrupted. The model is minGPT's shape in
miniature: token and position embeddings, pre-norm transformer blocks with causal
self-attention, a linear head.

Run it from the repository root::

    python examples/char_gpt.py [--root DIR] [--steps N] [--workers W] [--windows L]

It trains ``N`` iterations (default 150; an epoch ends when the stream runs out: 4 shards of
``L`` windows, default 200, make 100 batches) with a checkpoint every 10
(``DIR/chkpt/char_gpt``), prints the loss now and then, writes the final weights to
``DIR/final.pt`` and prints a sample of generated text. ``DIR`` defaults to
``./char_gpt_run``; the shards go to ``DIR/shards``. Under ``torchrun --nproc_per_node=2``
each process reads its own part of the shards.

Needs Hugging Face datasets: ``pip install "helios-blaze[streams]"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt

CHARS = "\nabcdefghijklmnopqrstuvwxyz ,."
"""The vocabulary: every character the corpus uses."""
BLOCK = 32
"""The characters a window predicts (each JSON line holds BLOCK + 1)."""
BATCH_SIZE = 8
STOI = {c: i for i, c in enumerate(CHARS)}

_WORDS = {
    "who": ["the cat", "a dog", "the old man", "my sister", "the robot", "a small bird"],
    "does": ["sees", "likes", "finds", "paints", "follows", "remembers"],
    "what": ["the moon", "a red ball", "the river", "an open door", "the garden", "a song"],
    "how": ["slowly", "at night", "with care", "again", "in silence", "every day"],
}


def write_corpus(folder: pathlib.Path, shards: int = 4, windows: int = 200, seed: int = 0) -> None:
    """Write ``shards`` JSON-lines files of ``windows`` text windows each.

    Args:
        folder: where the shards go (created).
        shards: the number of files.
        windows: the windows (lines) per file.
        seed: the seed of the sentences.
    """
    generator = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        text = ""
        while len(text) < windows * (BLOCK + 1):
            words = [generator.choice(options) for options in _WORDS.values()]
            text += " ".join(words) + (". " if generator.random() < 0.8 else ",\n")
        lines = [
            json.dumps({"text": text[i * (BLOCK + 1) : (i + 1) * (BLOCK + 1)]})
            for i in range(windows)
        ]
        (folder / f"part-{shard:03d}.jsonl").write_text("\n".join(lines) + "\n")


def encode(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a window of text into the input and target token ids."""
    ids = torch.tensor([STOI[c] for c in row["text"]])
    return {"x": ids[:-1], "y": ids[1:]}


def text_stream(folder: pathlib.Path) -> Any:
    """The shards as a Hugging Face stream of ``{"x", "y"}`` token windows."""
    import datasets

    files = sorted(str(path) for path in folder.glob("*.jsonl"))
    stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    return stream.map(encode, remove_columns=["text"])


class TextShards(hld.DataModule):
    """The text stream, read by ``workers`` loader workers per process."""

    def __init__(self, folder: pathlib.Path, workers: int) -> None:
        super().__init__()
        self.folder, self.workers = folder, workers

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=BATCH_SIZE, num_workers=self.workers)
        self._train_dataset = self._create_dataset(text_stream(self.folder), params)


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        mask = torch.triu(torch.ones(BLOCK, BLOCK, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        h = self.norm1(x)
        attended, _ = self.attention(h, h, h, attn_mask=self.mask[:length, :length])
        x = x + attended
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token and position embeddings, transformer blocks, a head over the vocabulary."""

    def __init__(self, width: int = 48, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(len(CHARS), width)
        self.positions = nn.Embedding(BLOCK, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, len(CHARS), bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)
        return self.head(self.norm(self.blocks(x)))


class CharGPT(hlm.Model):
    """The helios model: the GPT, AdamW, a cross-entropy step."""

    def __init__(self, step_sleep: float = 0.0) -> None:
        super().__init__("char_gpt")
        self.step_sleep = step_sleep
        self.last_loss = math.nan

    def setup(self, fast_init: bool = False) -> None:
        self.net = GPT().to(self.device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=3e-3, weight_decay=0.01)

    def train_step(self, batch: dict[str, torch.Tensor], state: hlt.TrainingState) -> None:
        x, y = batch["x"].to(self.device), batch["y"].to(self.device)
        logits = self.net(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss.detach()
        self.last_loss = float(loss.detach())
        if self.step_sleep:
            time.sleep(self.step_sleep)

    def on_training_batch_end(self, state: hlt.TrainingState, should_log: bool = False) -> None:
        super().on_training_batch_end(state, should_log)
        if should_log and self.rank == 0:
            print(f"iteration {state.current_iteration}: loss {self.last_loss:.3f}")

    @torch.no_grad()
    def generate(self, prompt: str, length: int) -> str:
        """Continue ``prompt`` by ``length`` characters (greedy)."""
        self.net.eval()
        ids = torch.tensor([[STOI[c] for c in prompt]], device=self.device)
        for _ in range(length):
            logits = self.net(ids[:, -BLOCK:])
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return "".join(CHARS[i] for i in ids[0].tolist())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("char_gpt_run"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--windows", type=int, default=200, help="windows per shard")
    parser.add_argument("--step-sleep", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shards = args.root / "shards"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not shards.exists():
        write_corpus(shards, windows=args.windows)
    while not (shards / "part-003.jsonl").exists():  # the other processes of a torchrun
        time.sleep(0.1)
    model = CharGPT(step_sleep=args.step_sleep)
    trainer = hlt.Trainer(
        run_name="char_gpt",
        train_unit="iteration",
        total_steps=args.steps,
        chkpt_frequency=10,
        print_frequency=20,
        chkpt_root=args.root / "chkpt",
        use_cpu=True,
        enable_deterministic=True,
        print_banner=False,
    )
    if not trainer.fit(model, TextShards(shards, args.workers)):
        return 1
    if model.rank == 0:
        torch.save(model.net.state_dict(), args.root / "final.pt")
        print("sample:", model.generate("the cat ", 40).replace("\n", " "))
        chance = math.log(len(CHARS))
        print(f"final loss {model.last_loss:.3f} (chance: {chance:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
