"""A tiny multilingual text encoder distilled into the tiny CLIP's space, as the real one was made.

The tiny CLIP learns from English captions only, as real CLIP did, so a Korean prompt through its
own text tower lands near nothing in particular. clip-ViT-B-32-multilingual-v1 was made by
teaching a student to put a sentence and its translations where CLIP's text tower puts the English
sentence; this does the same on the corpus captions: each English caption goes where the teacher
puts it, each Korean caption (alone and inside the prompt "a photo of ...") where the teacher puts
its class's English captions on average. Saved with sentence-transformers, it loads through the
same `SentenceTransformer(path)` the product uses for a downloaded encoder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
from transformers import CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel

from common.devkit import corpus
from common.devkit.tiny_clip import REPORT_FILE, build_tokenizer, text_features, training_threads

WIDTH, LAYERS, HEADS = 64, 2, 4
STEPS, LEARNING_RATE = 300, 3e-3


def training_pairs(model: CLIPModel, processor: CLIPProcessor) -> tuple[list[str], torch.Tensor]:
    """Texts and the unit vectors the student should give them (the teacher's)."""
    texts: list[str] = []
    targets: list[torch.Tensor] = []
    with torch.no_grad():
        for entry in corpus.CLASSES.values():
            english = F.normalize(text_features(model, processor, entry.captions_en), dim=-1)
            centre = F.normalize(english.mean(0), dim=-1)
            korean = [*entry.captions_ko, *(f"a photo of {text}" for text in entry.captions_ko)]
            texts += [*entry.captions_en, *korean]
            targets += [*english, *[centre] * len(korean)]
    return texts, torch.stack(targets)


def student_encoder(directory: Path, dim: int) -> SentenceTransformer:
    """An untrained encoder of the student's shape (built in `directory`), giving `dim`-wide vectors."""
    tokenizer = build_tokenizer(directory / "encoder")  # byte-level: any language encodes
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                            num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=77,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    CLIPTextModel(config).save_pretrained(directory / "encoder")
    modules = [Transformer(str(directory / "encoder"), max_seq_length=77), Pooling(WIDTH, "mean"),
               Dense(WIDTH, dim, activation_function=torch.nn.Identity())]
    return SentenceTransformer(modules=modules, device="cpu")


def distill_student(teacher_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Train the student against the CLIP model at `teacher_dir` and save it to `out_dir`."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with training_threads():
        torch.manual_seed(seed)
        teacher = CLIPModel.from_pretrained(teacher_dir).eval()
        texts, targets = training_pairs(teacher, CLIPProcessor.from_pretrained(teacher_dir))
        with tempfile.TemporaryDirectory(prefix="tiny-student-") as scratch:
            student = student_encoder(Path(scratch), targets.shape[1])
        features = student.preprocess(texts)
        optimiser = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
        student.train()
        for _ in range(STEPS):
            optimiser.zero_grad(set_to_none=True)
            output = F.normalize(student(dict(features))["sentence_embedding"], dim=-1)
            loss = (1 - (output * targets).sum(-1)).mean()
            loss.backward()
            optimiser.step()
        student.eval()
    student.save(str(out_dir))
    report = {"teacher": teacher_dir.name, "texts": len(texts), "steps": STEPS, "final_loss": round(float(loss.detach()), 4),
              "wall_seconds": round(time.perf_counter() - started, 2)}
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return out_dir


def embed(encoder: Path, texts: list[str]) -> np.ndarray:
    """Unit vectors, as the product computes them from a sentence-transformers encoder."""
    vectors = SentenceTransformer(str(encoder), device="cpu").encode(texts, convert_to_numpy=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
