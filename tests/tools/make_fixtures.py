"""Builds the extra parity fixtures in tests/fixtures/ with the reference
libraries (transformers, diffusers): tiny random-weight models whose shapes
differ from ../shared/fixtures on purpose (other head counts and patch
sizes, GELU instead of QuickGELU, non-square inputs, a SAM window that does
not divide the grid, two layers per UNet block with linear projections,
the linear beta schedule, a non-square latent).

Run where torch, transformers and diffusers are installed (not needed by
fmseg itself):

    python3 tests/tools/make_fixtures.py OUT_DIR [TOKENIZER_DIR]

TOKENIZER_DIR holds CLIP's vocab.json and merges.txt, used to make real
input_ids. Every family is written as <OUT_DIR>/<name>/ with config.json (or
the diffusers sub-folders), weights, ref.safetensors and ref.json, named as
in ../shared/fixtures/README.md.
"""
import json
import math
import os
import sys
import traceback

import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "fixtures-extra"
TOKDIR = sys.argv[2] if len(sys.argv) > 2 else None
torch.set_grad_enabled(False)


def randomize(model, seed):
    """Weights large enough that every op matters (as the shared fixtures)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif p.ndim == 1 and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def eager(cls, cfg, **kw):
    """A model whose attention returns its probabilities."""
    try:
        return cls._from_config(cfg, attn_implementation="eager", **kw).eval()
    except Exception:
        m = cls(cfg, **kw).eval()
        try:
            m.set_attn_implementation("eager")
        except Exception:
            pass
        return m


def dump(dirname, meta, tensors):
    os.makedirs(dirname, exist_ok=True)
    clean = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(clean, os.path.join(dirname, "ref.safetensors"))
    meta = dict(meta)
    meta["tensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in clean.items()}
    with open(os.path.join(dirname, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", dirname, len(clean), "tensors")


def smooth_image(gen, c, h, w):
    """Random but image-like: low-frequency noise in [-1, 1]."""
    small = torch.rand((1, c, max(2, h // 4), max(2, w // 4)), generator=gen) * 2 - 1
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def token_ids(texts, length=77):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(TOKDIR, "vocab.json"), os.path.join(TOKDIR, "merges.txt"))
    enc = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"]


def copy_tokenizer(dirname):
    if not TOKDIR:
        return
    for f in ("vocab.json", "merges.txt"):
        with open(os.path.join(TOKDIR, f), "rb") as src, open(os.path.join(dirname, f), "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(dirname, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "do_lower_case": True}, f, indent=1)


# ---------------------------------------------------------------------------
def make_clip():
    from transformers import CLIPConfig, CLIPModel
    name = os.path.join(OUT, "clip-alt")
    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_hidden_layers=2,
                         hidden_act="gelu", max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=40, intermediate_size=72, num_attention_heads=5, num_hidden_layers=2,
                           image_size=48, patch_size=8, hidden_act="gelu"),
        projection_dim=20)
    model = eager(CLIPModel, cfg)
    randomize(model, 1)
    model.save_pretrained(name)
    copy_tokenizer(name)
    gen = torch.Generator().manual_seed(11)
    px = torch.cat([smooth_image(gen, 3, 48, 48) for _ in range(2)])
    texts = ["a photo of a dog.", "Sky & SEA", "a diagram of the lungs", "road"]
    ids = token_ids(texts)
    out = model(input_ids=ids, pixel_values=px)
    # The towers on their own: their pooler_output is the unprojected one.
    vo = model.vision_model(pixel_values=px, output_hidden_states=True, output_attentions=True)
    to = model.text_model(input_ids=ids, output_hidden_states=True)
    ref = {"pixel_values": px, "input_ids": ids}
    for i, h in enumerate(vo.hidden_states):
        ref[f"vision.hidden_states.{i}"] = h
    for i, a in enumerate(vo.attentions):
        ref[f"vision.attentions.{i}"] = a
    ref["vision.last_hidden_state"] = vo.last_hidden_state
    ref["vision.pooler_output"] = vo.pooler_output
    ref["image_embeds"] = model.visual_projection(vo.pooler_output)
    layer = model.vision_model.encoder.layers[-1]
    ln1 = layer.layer_norm1(vo.hidden_states[-2])
    ref["vision.last.ln1"] = ln1
    ref["vision.last.q"] = layer.self_attn.q_proj(ln1)
    ref["vision.last.k"] = layer.self_attn.k_proj(ln1)
    ref["vision.last.v"] = layer.self_attn.v_proj(ln1)
    for i, h in enumerate(to.hidden_states):
        ref[f"text.hidden_states.{i}"] = h
    ref["text.last_hidden_state"] = to.last_hidden_state
    ref["text.pooler_output"] = to.pooler_output
    ref["text_embeds"] = model.text_projection(to.pooler_output)
    ref["logits_per_image"] = out.logits_per_image
    ref["logit_scale"] = model.logit_scale.detach().reshape(1)
    ipx = smooth_image(gen, 3, 56, 40)
    ref["interp.pixel_values"] = ipx
    ref["interp.vision.last_hidden_state"] = model.vision_model(
        pixel_values=ipx, interpolate_pos_encoding=True).last_hidden_state
    dump(name, {"family": "clip", "model_class": "CLIPModel", "texts": texts,
                "notes": "made by tests/tools/make_fixtures.py; as clip-tiny, without preprocess.*"}, ref)


def vit_like(name, family, model, interp_hw, extra_meta, last_names=None):
    gen = torch.Generator().manual_seed(21)
    size = model.config.image_size
    px = torch.cat([smooth_image(gen, 3, size, size) for _ in range(2)])
    out = model(pixel_values=px, output_hidden_states=True, output_attentions=True)
    ref = {"pixel_values": px}
    for i, h in enumerate(out.hidden_states):
        ref[f"hidden_states.{i}"] = h
    for i, a in enumerate(out.attentions):
        ref[f"attentions.{i}"] = a
    ref["last_hidden_state"] = out.last_hidden_state
    if getattr(out, "pooler_output", None) is not None:
        ref["pooler_output"] = out.pooler_output
    if last_names:
        # the last layer, wherever this transformers version keeps it
        layers = [m for _, m in model.named_modules() if hasattr(m, "layernorm_before")]
        layer = layers[-1]
        ln1 = layer.layernorm_before(out.hidden_states[-2])
        ref["last.ln1"] = ln1
        mods = dict(layer.named_modules())
        print("last layer modules:", [n for n in mods if n])

        def pick(*leaves):
            return next(m for n, m in mods.items() if n.split(".")[-1] in leaves)
        ref["last.q"] = pick("query", "q_proj")(ln1)
        ref["last.k"] = pick("key", "k_proj")(ln1)
        ref["last.v"] = pick("value", "v_proj")(ln1)
    ipx = smooth_image(gen, 3, *interp_hw)
    kw = {"interpolate_pos_encoding": True} if family == "dino" else {}
    iout = model(pixel_values=ipx, output_attentions=True, **kw)
    ref["interp.pixel_values"] = ipx
    ref["interp.last_hidden_state"] = iout.last_hidden_state
    ref["interp.attentions.last"] = iout.attentions[-1]
    model.save_pretrained(name)
    meta = {"family": family, "notes": "made by tests/tools/make_fixtures.py"}
    meta.update(extra_meta)
    dump(name, meta, ref)


def make_dino():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=60,
                    image_size=24, patch_size=4, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
    model = eager(ViTModel, cfg, add_pooling_layer=False)
    randomize(model, 2)
    vit_like(os.path.join(OUT, "dino-alt"), "dino", model, (28, 20),
             {"model_class": "ViTModel(add_pooling_layer=False)"}, last_names=True)


def make_dinov2():
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=3,
                       image_size=28, patch_size=7, layerscale_value=0.5, hidden_act="gelu",
                       layer_norm_eps=1e-6)
    model = eager(Dinov2Model, cfg)
    randomize(model, 3)
    vit_like(os.path.join(OUT, "dinov2-alt"), "dinov2", model, (35, 49),
             {"model_class": "Dinov2Model", "num_register_tokens": 0})


def make_dinov2_reg():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    cfg = Dinov2WithRegistersConfig(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, mlp_ratio=2,
                                    image_size=42, patch_size=14, num_register_tokens=2,
                                    layerscale_value=0.7, hidden_act="gelu", layer_norm_eps=1e-6)
    model = eager(Dinov2WithRegistersModel, cfg)
    randomize(model, 4)
    vit_like(os.path.join(OUT, "dinov2-reg-alt"), "dinov2", model, (56, 28),
             {"model_class": "Dinov2WithRegistersModel", "num_register_tokens": 2})


# ---------------------------------------------------------------------------
def make_sam():
    from transformers import SamConfig, SamModel
    name = os.path.join(OUT, "sam-alt")
    vision = dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, mlp_dim=48, image_size=64,
                  patch_size=8, window_size=3, global_attn_indexes=[2], output_channels=12, num_pos_feats=6,
                  qkv_bias=True, use_abs_pos=True, use_rel_pos=True, layer_norm_eps=1e-6)
    prompt = dict(hidden_size=12, image_size=64, patch_size=8, mask_input_channels=4, num_point_embeddings=4,
                  image_embedding_size=8)
    decoder = dict(hidden_size=12, num_hidden_layers=2, num_attention_heads=2, mlp_dim=24,
                   iou_head_hidden_dim=10, iou_head_depth=3, num_multimask_outputs=3, attention_downsample_rate=2)
    cfg = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    model = eager(SamModel, cfg)
    randomize(model, 5)
    model.save_pretrained(name)
    gen = torch.Generator().manual_seed(31)
    resized, original = (48, 64), (45, 60)
    px = torch.zeros(1, 3, 64, 64)
    px[:, :, :resized[0], :resized[1]] = smooth_image(gen, 3, *resized) * 2
    emb = model.get_image_embeddings(px)
    venc = model.vision_encoder(px, output_hidden_states=True)
    ref = {"pixel_values": px, "resized_hw": torch.tensor(resized), "original_hw": torch.tensor(original),
           "image_embeddings": emb}
    for i, h in enumerate(venc.hidden_states):
        ref[f"vision.hidden_states.{i}"] = h
    points = torch.tensor([[[[40.0, 20.5], [10.25, 35.0]]]])
    labels = torch.tensor([[[1, 0]]])
    box = torch.tensor([[[5.5, 8.0, 50.0, 41.25]]])
    ref["prompt.points"], ref["prompt.labels"], ref["prompt.box"] = points, labels, box
    cases = {
        "points": dict(input_points=points, input_labels=labels),
        "box": dict(input_boxes=box),
        "points_box": dict(input_points=points[:, :, :1], input_labels=labels[:, :, :1], input_boxes=box),
    }
    for case, kw in cases.items():
        for mode, multi in (("multi", True), ("single", False)):
            o = model(image_embeddings=emb, multimask_output=multi, **kw)
            ref[f"{case}.{mode}.pred_masks"] = o.pred_masks
            ref[f"{case}.{mode}.iou_scores"] = o.iou_scores
    low = ref["points.multi.pred_masks"][0, 0]
    up = torch.nn.functional.interpolate(low[None], size=(64, 64), mode="bilinear", align_corners=False)
    up = up[..., :resized[0], :resized[1]]
    ref["points.multi.masks_original_logits"] = torch.nn.functional.interpolate(
        up, size=original, mode="bilinear", align_corners=False)[0]
    dump(name, {"family": "sam", "model_class": "SamModel",
                "notes": "made by tests/tools/make_fixtures.py; window 3 does not divide the 8x8 grid"}, ref)


# ---------------------------------------------------------------------------
def make_sd():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import Attention, AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel
    name = os.path.join(OUT, "sd-alt")
    os.makedirs(name, exist_ok=True)
    text_cfg = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
    text = eager(CLIPTextModel, text_cfg)
    randomize(text, 6)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16), layers_per_block=2, attention_head_dim=(2, 4),
        cross_attention_dim=16, norm_num_groups=4, use_linear_projection=True).eval()
    randomize(unet, 7)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16).eval()
    randomize(vae, 8)
    sched = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    text.save_pretrained(os.path.join(name, "text_encoder"))
    unet.save_pretrained(os.path.join(name, "unet"))
    vae.save_pretrained(os.path.join(name, "vae"))
    sched.save_pretrained(os.path.join(name, "scheduler"))
    if TOKDIR:
        tokdir = os.path.join(name, "tokenizer")
        os.makedirs(tokdir, exist_ok=True)
        copy_tokenizer(tokdir)
    with open(os.path.join(name, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                   "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                   "scheduler": ["diffusers", "DDIMScheduler"]}, f, indent=1)

    gen = torch.Generator().manual_seed(41)
    image = smooth_image(gen, 3, 16, 24)
    dist = vae.encode(image).latent_dist
    ref = {"image": image, "vae.latent_mean": dist.mean, "vae.latent_std": dist.std}
    latents = dist.mean * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.tensor([250])
    noisy = sched.add_noise(latents, noise, t)
    texts = ["a photo of a cat and a dog.", ""]
    ids = token_ids(texts)
    emb = text(ids)[0]
    ref.update({"latents": latents, "noise": noise, "timestep": t, "noisy_latents": noisy,
                "scheduler.alphas_cumprod": sched.alphas_cumprod.float(), "input_ids": ids,
                "text_embeddings": emb})
    unet.set_attn_processor(AttnProcessor())
    store = {}
    for mod_name, module in unet.named_modules():
        if isinstance(module, Attention) and mod_name.split(".")[-1] in ("attn1", "attn2"):
            def wrapped(q, k, mask=None, _orig=module.get_attention_scores, _name=mod_name):
                p = _orig(q, k, mask)
                store["attn." + _name] = p.detach().clone()
                return p
            module.get_attention_scores = wrapped
    ref["unet.eps"] = unet(torch.cat([noisy, noisy]), t, encoder_hidden_states=emb).sample
    ref.update(store)
    ref["vae.decoded"] = vae.decode(latents / vae.config.scaling_factor).sample
    dump(name, {"family": "stable-diffusion", "layout": "diffusers StableDiffusionPipeline", "texts": texts,
                "notes": "made by tests/tools/make_fixtures.py; linear projections, two layers per block, "
                         "linear beta schedule, 8x12 latent"}, ref)


if __name__ == "__main__":
    failed = 0
    for make in (make_clip, make_dino, make_dinov2, make_dinov2_reg, make_sam, make_sd):
        try:
            make()
        except Exception:
            failed += 1
            print("FAILED", make.__name__)
            traceback.print_exc()
    sys.exit(1 if failed else 0)
