"""Per-subject experts (DreamBooth's role in the paper, without prior preservation or the
class-token trick): fine-tune the base model on one mined cluster, sample its unseen
prompts with high classifier-free guidance, write the samples and a record, then drop
the expert (LoRA weights are small and kept).

Store layout per expert (`experts/<cluster_id>/`):
  samples/<j>.png     one file per (prompt, sample)
  record.json         expert id, prompts, seeds, scheduler, steps, guidance, timings
  lora.safetensors    LoRA weights (method=lora), or unet.pt when expert.keep=true
  _DONE.json          written last: only then is the expert complete
"""
from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from pydantic import BaseModel

from suti.models.clip import text_hidden_states, tokenizer
from suti.models.convnet import to_unit
from suti.models.diffusion import diffusion_loss, guided_scheduler, sample, to_uint8, training_scheduler
from suti.world.corpus import png_bytes
from suti.world.scene import stable_seed

log = logging.getLogger("suti.experts")


class ExpertSpec(BaseModel):
    """What one expert needs: small and serialisable (Prefect task input)."""
    cluster_id: str
    image_keys: list[str]
    texts: list[str]
    prompts: list[dict]


class ExpertResult(BaseModel):
    cluster_id: str
    status: str  # trained | reused | failed
    samples: int = 0
    train_seconds: float = 0.0
    sample_seconds: float = 0.0
    error: str | None = None


def load_clusters(store) -> list[dict]:
    """Mined clusters, only when the mining stage finished (its done marker)."""
    if not store.is_done("mine"):
        raise FileNotFoundError("no finished mining output in the store: run `suti mine` first")
    manifest = store.get_json("mine/manifest.json")
    out = []
    for shard in manifest["shards"]:
        key = shard if isinstance(shard, str) else shard["key"]
        out += [json.loads(x) for x in store.get_bytes(key).decode().splitlines() if x.strip()]
    return out


def load_prompts(store) -> dict[str, list[dict]]:
    rows = [json.loads(x) for x in store.get_bytes("mine/prompts.jsonl").decode().splitlines() if x.strip()]
    return {r["cluster_id"]: r["prompts"] for r in rows}


def expert_specs(store, limit: int | None = None) -> list[ExpertSpec]:
    prompts = load_prompts(store)
    specs = [ExpertSpec(cluster_id=c["cluster_id"], image_keys=c["images"], texts=c["texts"],
                        prompts=prompts.get(c["cluster_id"], [])) for c in load_clusters(store)]
    specs = [s for s in specs if s.prompts]
    return specs[:limit] if limit else specs


# the expert settings that change an expert's weights or samples
RECIPE_KEYS = ("method", "steps", "batch_size", "lr", "optimizer", "lora_rank", "guidance", "prompts_per_cluster",
               "samples_per_prompt", "sample_steps", "scheduler")


def expert_fingerprint(spec: ExpertSpec, cfg: DictConfig, base: dict | None, samples_per_prompt: int,
                       slot_seeds: list[int] | None = None) -> str:
    """What an expert's outputs depend on: its cluster (images, texts, prompts), the expert
    recipe (not how many clusters or how they fan out), the base model (its recipe: training,
    schedule, world), the samples per prompt (and the evaluation's seeds and sampler when it
    serves Table 1). A stored expert is reused only while this is unchanged."""
    from omegaconf import OmegaConf

    from suti.store import digest

    e = OmegaConf.to_container(cfg.expert, resolve=True)
    part = {"spec": spec.model_dump(), "expert": {k: v for k, v in e.items() if k in RECIPE_KEYS}, "base": base,
            "samples_per_prompt": int(samples_per_prompt), "seed": int(cfg.seed)}
    if slot_seeds is not None:
        part["slots"] = {"seeds": [int(x) for x in slot_seeds],
                         "sampler": {k: cfg.eval[k] for k in ("guidance", "scheduler", "sample_steps")}}
    return digest(part)


def base_recipe(store) -> dict | None:
    """The trained base model's recipe (its done marker): what experts are fine-tuned from."""
    return (store.done_meta("foundation/base") or {}).get("recipe")


def current_experts(cfg: DictConfig, store, root: str = "experts") -> list[dict]:
    """Records of the finished experts of the current mining and `expert.clusters` (not every
    expert ever stored: an expert of an earlier mining or recipe is left out)."""
    base = base_recipe(store)
    n = int(cfg.expert.samples_per_prompt)
    out = []
    for spec in expert_specs(store, cfg.expert.clusters):
        meta = store.done_meta(f"{root}/{spec.cluster_id}")
        if meta and meta.get("fingerprint") == expert_fingerprint(spec, cfg, base, n):
            out.append(store.get_json(f"{root}/{spec.cluster_id}/record.json"))
    return out


def read_image(store, key: str, resolution: int) -> np.ndarray:
    img = Image.open(io.BytesIO(store.get_bytes(key))).convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _optimizer(params, ecfg: DictConfig):
    if ecfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=ecfg.lr, relative_step=False, scale_parameter=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=ecfg.lr, weight_decay=0.0)


def add_lora(unet, rank: int):
    """LoRA adapters on the attention projections (peft)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return [p for p in unet.parameters() if p.requires_grad]


def finetune(unet, clip, clip_name: str, images: np.ndarray, texts: list[str], ecfg: DictConfig, backbone: DictConfig,
             seed: int) -> float:
    """Denoising fine-tuning on the cluster's (image, text) pairs; returns the mean loss of
    the last 10% of steps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        states = text_hidden_states(clip, tokenizer(clip_name)(texts))
    x_all = to_unit(torch.as_tensor(images))
    if ecfg.method == "lora":
        params = add_lora(unet, ecfg.lora_rank)
    else:
        params = list(unet.parameters())
    unet.train()
    opt = _optimizer(params, ecfg)
    sched = training_scheduler(backbone)
    losses = []
    for _ in range(ecfg.steps):
        idx = torch.randint(0, len(x_all), (ecfg.batch_size,), generator=g)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=g)
        loss = diffusion_loss(sched, unet(sched.add_noise(x0, noise, t), t, states[idx]).sample, x0, noise, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return float(np.mean(tail)) if tail else float("nan")


def sample_prompts(unet, clip, clip_name: str, prompts: list[str], n_per_prompt: int, kind: str, steps: int,
                   guidance: float, seed: int, backbone) -> np.ndarray:
    """Sample `n_per_prompt` images for each prompt with classifier-free guidance
    (`backbone`: its schedule and prediction type)."""
    tok = tokenizer(clip_name)
    texts = [p for p in prompts for _ in range(n_per_prompt)]
    with torch.no_grad():
        cond = text_hidden_states(clip, tok(texts))
        uncond = text_hidden_states(clip, tok([""] * len(texts)))
    res = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x = sample(lambda x, t, c: unet(x, t, c).sample, cond, uncond, (len(texts), 3, res, res),
               guided_scheduler(kind, guidance, backbone), steps, guidance, g)
    return to_uint8(x)


def run_expert(spec: ExpertSpec, cfg: DictConfig, store, base_state: dict, clip, root: str = "experts",
               samples_per_prompt: int | None = None, slot_seeds: list[int] | None = None) -> ExpertResult:
    """Train one expert, sample its prompts, write samples + record + done marker (last).
    `root` is where experts live (`experts/` for the data engine, `eval/experts/` for the
    evaluation's DreamBooth row). With `slot_seeds` (the evaluation) each prompt is sampled
    with its own seed at the evaluation's sampler settings, as every other method is."""
    from diffusers import UNet2DConditionModel

    prefix = f"{root}/{spec.cluster_id}"
    ecfg, R = cfg.expert, cfg.world.resolution
    n_per = int(samples_per_prompt or ecfg.samples_per_prompt)
    fp = expert_fingerprint(spec, cfg, base_recipe(store), n_per, slot_seeds)
    meta = store.done_meta(prefix)
    if meta is not None and meta.get("fingerprint") == fp:
        rec = store.get_json(f"{prefix}/record.json")
        return ExpertResult(cluster_id=spec.cluster_id, status="reused", samples=len(rec["samples"]),
                            train_seconds=rec["train_seconds"], sample_seconds=rec["sample_seconds"])
    if meta is not None:  # an expert of another cluster content, recipe or base: redo it
        store.delete(prefix)
    seed = stable_seed("expert", spec.cluster_id, cfg.seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(base_state["meta"]["unet_config"])
    unet.load_state_dict(base_state["state_dict"])
    images = np.stack([read_image(store, k, R) for k in spec.image_keys])
    t0 = time.time()
    loss = finetune(unet, clip, cfg.backbone.clip_config, images, spec.texts, ecfg, cfg.backbone, seed)
    train_s = time.time() - t0
    t1 = time.time()
    prompt_texts = [p["text"] for p in spec.prompts]
    if slot_seeds is None:
        seeds = [seed + 1] * len(prompt_texts)
        samples = sample_prompts(unet, clip, cfg.backbone.clip_config, prompt_texts, n_per,
                                 ecfg.scheduler, ecfg.sample_steps, ecfg.guidance, seed + 1, cfg.backbone)
    else:
        from suti.models.backbone import TinyBackbone, base_model_fn, text_to_image
        from suti.models.diffusion import schedule_config

        seeds = [int(s) for s in slot_seeds]
        ev = cfg.eval
        bb = TinyBackbone(clip, cfg.backbone.clip_config, unet.eval(), schedule_config(cfg.backbone))
        bb.sample_precision = str(cfg.backbone.sample_precision)
        samples = np.concatenate([text_to_image(bb, base_model_fn(bb), t, n_per, ev.guidance, ev.scheduler,
                                                ev.sample_steps, s) for t, s in zip(prompt_texts, seeds)])
    sample_s = time.time() - t1
    records = []
    for j, img in enumerate(samples):
        key = f"{prefix}/samples/{j}.png"
        store.put_bytes(key, png_bytes(img))
        p = spec.prompts[j // n_per]
        records.append({"key": key, "prompt": p["text"], "prompt_record": p, "seed": seeds[j // n_per], "index": j})
    if ecfg.method == "lora":
        from peft import get_peft_model_state_dict
        from safetensors.torch import save as st_save

        store.put_bytes(f"{prefix}/lora.safetensors",
                        st_save({k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}))
    elif ecfg.keep:
        buf = io.BytesIO()
        torch.save(unet.state_dict(), buf)
        store.put_bytes(f"{prefix}/unet.pt", buf.getvalue())
    record = {"expert_id": spec.cluster_id, "cluster_id": spec.cluster_id, "method": ecfg.method, "steps": ecfg.steps,
              "lr": ecfg.lr, "optimizer": ecfg.optimizer, "batch_size": ecfg.batch_size, "final_loss": loss,
              "scheduler": ecfg.scheduler, "sample_steps": ecfg.sample_steps, "guidance": ecfg.guidance,
              "seed": seed, "demo_keys": spec.image_keys, "demo_texts": spec.texts, "samples": records,
              "fingerprint": fp,
              "train_seconds": round(train_s, 2), "sample_seconds": round(sample_s, 2)}
    store.put_json(f"{prefix}/record.json", record)
    store.mark_done(prefix, {"samples": len(records), "fingerprint": fp})
    return ExpertResult(cluster_id=spec.cluster_id, status="trained", samples=len(records),
                        train_seconds=round(train_s, 2), sample_seconds=round(sample_s, 2))


def finished_experts(store, root: str = "experts") -> list[dict]:
    """Records of complete experts only (a half-written one has no done marker)."""
    depth = root.count("/") + 1
    ids = sorted({k.split("/")[depth] for k in store.list(root) if k.endswith("/_DONE.json")
                  and k.count("/") == depth + 1})
    return [store.get_json(f"{root}/{cid}/record.json") for cid in ids]
