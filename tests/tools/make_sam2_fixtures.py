"""Parity fixtures for SAM 2 (fmseg.models.sam2): tiny random Sam2Model
directories in the Hugging Face layout (config.json as transformers writes
Sam2Config, model.safetensors under transformers' names: the image encoder,
the prompt encoder, the mask decoder and no_memory_embedding) with
reference outputs made by the ORIGINAL code, facebookresearch/sam2: a
SAM2Base built directly with the tiny modules (Hiera, FpnNeck,
ImageEncoder, PromptEncoder, TwoWayTransformer, MaskDecoder) and the
flags of sam2.1_hiera_t.yaml (plus the image predictor's
dynamic_multimask_via_stability overrides of build_sam.py), and
SAM2ImagePredictor's `_predict` / SAM2Base's `_forward_sam_heads` for the
prompts.

    /usr/bin/python3 tests/tools/make_sam2_fixtures.py --sam2 /path/to/sam2

--sam2: a checkout of facebookresearch/sam2, or `git archive HEAD sam2`
extracted with a COMMIT file beside it (never copied here). Runs on
Debian's python3-torch (1.13, CPU) with numpy; no transformers.

What is not the original's own code, and why:
  - sam2/__init__.py initialises hydra (not installable here): the `sam2`
    package is entered without running it; hieradet.py's
    `from iopath.common.file_io import g_pathmgr` gets a stand-in (it is
    only used to read weights_path, which stays None).
  - MultiScaleAttention and the decoder's Attention call
    F.scaled_dot_product_attention, which torch 1.13 lacks: the generator
    supplies the plain definition, softmax(q k^T / sqrt(d)) v (no mask,
    no dropout), which is what SDPA computes for these arguments.
  - sam2/utils/transforms.py imports torchvision (not installed) for the
    preprocessing (ToTensor, Resize, Normalize), which is not run here:
    those names get identity stand-ins. Its postprocess_masks (what the
    fixtures use) is plain torch.
  - SAM2Base._build_sam_heads builds the prompt encoder and mask decoder at
    SAM's sizes (8 heads, mlp_dim 2048, IoU head 3 x 256): a subclass
    builds the same modules at the tiny sizes of each case (the rest of
    the method as the original). The memory attention and memory encoder
    are empty stand-ins (image mode never calls them); SAM2Base's own
    memory / object-pointer parameters are drawn and loaded with the rest
    but not written to model.safetensors (nothing here reads them).
  - SAM2ImagePredictor.set_image transforms an image and hard-codes the
    feature sizes of a 1024 input: the generator runs the rest of it
    (forward_image, _prepare_backbone_features, no_mem_embed, the reshape
    into image_embed / high_res_feats) on the stored pixel_values with the
    tiny sizes, then calls the predictor's own `_predict`.

The weights are drawn for the original module (common.randomize: every
value float16-representable), renamed to transformers' names with the
rules of transformers' convert_sam2_to_hf.py (KEYS_TO_MODIFY_MAPPING and
its mlp / neck / score-head / hypernetwork patterns, point_embeddings.i
concatenated into point_embed.weight; restated in HF_RULES below) and
stored as F32; the original loads them back under its own names with
strict=True.

Writes tests/fixtures/sam2-tiny (the sam2.1_hiera_t structure scaled down:
stages 1-2-7-2, windows 8-4-14-7, global blocks 5, 7, 9, q_pool 3, scalp
1, top-down levels 2, 3; decoder with 3 multimask outputs) and
tests/fixtures/sam2-tiny-alt (other stage depths, windows, global blocks,
q_pool 2 (one pooling block in windows that tile the grid, one in padded
windows), a dim change without pooling, a non-square background position
embedding, a 3x3 neck, top-down levels 0, 1, 80x80 images in a batch of
2; decoder with 2 multimask outputs, a 2-deep IoU head, 3 heads). Both
keep scalp 1: SAM2Base takes the last three levels and projects levels 0
and 1 with conv_s0 / conv_s1 (forward_image), which only fits three.

Reference tensors (ref.json lists them; prompts in the model's input
frame, pixels of the S x S input, as `_predict` takes them):
  pixel_values            (B, 3, S, S)  input
  trunk.<i>               (B, C_i, H_i, W_i)  Hiera's output per stage, high to low resolution
  backbone_fpn.<i>        (B, d_model, H_i, W_i)  ImageEncoder's backbone_fpn (after scalp)
  vision_pos_enc.<i>      (B, d_model, H_i, W_i)  its vision_pos_enc
  vision_features         ImageEncoder's vision_features (= the last backbone_fpn level)
  image_embed             (B, d, h, w)  set_image's image_embed (lowest level + no_mem_embed)
  high_res_feats.<i>      set_image's high_res_feats (conv_s0 / conv_s1 of levels 0 and 1)
  original_hw             (2,) the original image size for postprocess_masks
  prompt.<case>.point_coords (1, P, 2), .point_labels (1, P), .boxes (1, 4),
                          .mask_input (1, 1, 4h, 4w) (the best low-res mask of point.multi)
  <case>.low_res_masks    (1, M, 4h, 4w)  the mask decoder's masks (before _predict's clamp)
  <case>.iou_predictions  (1, M)
  <case>.object_score_logits (1, 1)
  <case>.masks            (1, M, H0, W0)  _predict's masks (return_logits): postprocess_masks
                          to original_hw (fill_hole_area 0)
    cases: point.multi (one point, multimask), point.single (one point,
    dynamic multimask via stability), points (3 points with a negative),
    box, box_points (a box and 2 points), mask (one point and mask_input)
  heads.point_coords (B, 1, 2), heads.point_labels (B, 1): one point per image
  heads.low_res_multimasks (B, M, 4h, 4w), heads.ious (B, M), heads.low_res_masks (B, 1, 4h, 4w),
  heads.object_score_logits (B, 1): SAM2Base._forward_sam_heads on all B images (multimask by
    _use_multimask: one point; masks -1024 where the object score is not positive)
"""
import argparse
import json
import math
import os
import re
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "methods"))
import common  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# transformers' convert_sam2_to_hf.py for the image encoder, as
# (pattern, replacement) applied in order to the ImageEncoder's own names
# (prefixed image_encoder. in a SAM2Base checkpoint).
HF_RULES = [
    (r"^trunk\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^trunk\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    (r"^trunk\.blocks\.(\d+)\.mlp\.layers\.0\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_in."),
    (r"^trunk\.blocks\.(\d+)\.mlp\.layers\.1\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_out."),
    (r"^trunk\.", "vision_encoder.backbone."),
    (r"^neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
]

# ... and for the prompt encoder and mask decoder (sam_prompt_encoder.*,
# sam_mask_decoder.*): KEYS_TO_MODIFY_MAPPING's mask_downscaling,
# output_upscaling, .norm, out_proj and pe_layer entries; the MLPs'
# layers.<j> become proj_in, layers.<j-1>, proj_out (the hypernetwork,
# IoU-head and score-head patterns), the two-way blocks' mlp.layers.0/1
# proj_in / proj_out.
DECODER_RULES = [
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "shared_image_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.0\.", r"mask_decoder.transformer.layers.\1.mlp.proj_in."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.1\.", r"mask_decoder.transformer.layers.\1.mlp.proj_out."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^sam_mask_decoder\.(.*)\.out_proj\.", r"mask_decoder.\1.o_proj."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^no_mem_embed$", "no_memory_embedding"),
]
MLP_HEADS = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))"
                       r"\.layers\.(\d+)\.(weight|bias)$")


def hf_weights(weights):
    """SAM2Base's names -> transformers' (the parts Sam2Model holds)."""
    out, depth = {}, {}
    for k in weights:
        if k.startswith("image_encoder."):
            continue
        m = re.match(r"^sam_mask_decoder\.(.*)\.layers\.(\d+)\.weight$", k)
        if m and "transformer" not in m.group(1):
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    points = {}
    for k, v in weights.items():
        if k.startswith("image_encoder."):
            new = k[len("image_encoder."):]
            for pattern, repl in HF_RULES:
                new, n = re.subn(pattern, repl, new)
                if n:
                    break
            else:
                raise ValueError("no transformers name for " + k)
            out[new] = v
            continue
        m = re.match(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$", k)
        if m:
            points[int(m.group(1))] = v
            continue
        new = None
        for pattern, repl in DECODER_RULES:
            cand, n = re.subn(pattern, repl, k)
            if n:
                new = cand
                break
        if new is None:
            continue   # SAM2Base's memory / object-pointer parameters: not Sam2Model's
        m = MLP_HEADS.match(new)
        if m:
            j, last = int(m.group(2)), depth[m.group(1)[len("mask_decoder."):]] - 1
            part = "proj_in" if j == 0 else "proj_out" if j == last else "layers.%d" % (j - 1)
            new = "%s.%s.%s" % (m.group(1), part, m.group(3))
        out[new] = v
    out["prompt_encoder.point_embed.weight"] = np.concatenate([points[i] for i in sorted(points)], 0)
    return out


def import_sam2(path):
    """The original modules, without sam2/__init__.py's hydra set-up."""
    pkg = types.ModuleType("sam2")
    pkg.__path__ = [os.path.join(path, "sam2")]
    sys.modules["sam2"] = pkg
    for name in ("iopath", "iopath.common"):
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
    sys.modules["iopath.common.file_io"] = types.SimpleNamespace(g_pathmgr=None)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        class Unused(torch.nn.Module):
            """Stands in for the preprocessing transforms, which are not run."""
            def __init__(self, *args, **kwargs):
                super().__init__()

            def forward(self, x):
                return x
        tv = types.ModuleType("torchvision")
        tv.__path__ = []
        tvt = types.ModuleType("torchvision.transforms")
        tvt.Normalize = tvt.Resize = tvt.ToTensor = Unused
        tv.transforms = tvt
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.transforms"] = tvt
    if not hasattr(F, "scaled_dot_product_attention"):
        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
            assert attn_mask is None and dropout_p == 0.0 and not is_causal
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            return scores.softmax(dim=-1) @ v
        F.scaled_dot_product_attention = sdpa
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer
    from sam2.modeling.sam2_utils import MLP
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    return types.SimpleNamespace(
        Hiera=Hiera, FpnNeck=FpnNeck, ImageEncoder=ImageEncoder, PositionEmbeddingSine=PositionEmbeddingSine,
        SAM2Base=SAM2Base, MaskDecoder=MaskDecoder, PromptEncoder=PromptEncoder,
        TwoWayTransformer=TwoWayTransformer, MLP=MLP, SAM2ImagePredictor=SAM2ImagePredictor)


def image_encoder(mods, case):
    """The case's ImageEncoder (its trunk: .trunk) as sam2.1_hiera_*.yaml
    builds it: Hiera, FpnNeck with sine position encodings, nearest
    top-down interpolation."""
    trunk = mods.Hiera(embed_dim=case["embed_dim"], num_heads=case["num_heads"], q_pool=case["q_pool"],
                       q_stride=(2, 2), stages=case["stages"], dim_mul=2.0, head_mul=2.0,
                       window_pos_embed_bkg_spatial_size=case["bkg"], window_spec=case["window_spec"],
                       global_att_blocks=case["global_blocks"])
    pe = mods.PositionEmbeddingSine(num_pos_feats=case["d_model"], normalize=True, scale=None, temperature=10000)
    neck = mods.FpnNeck(position_encoding=pe, d_model=case["d_model"], backbone_channel_list=trunk.channel_list,
                        kernel_size=case["fpn_kernel"], stride=1, padding=case["fpn_padding"],
                        fpn_interp_model="nearest", fpn_top_down_levels=list(case["top_down"]))
    return mods.ImageEncoder(trunk=trunk, neck=neck, scalp=case["scalp"])


def sam2_base(cls, enc, image_size):
    """CLS (SAM2Base or a subclass) on the image encoder ENC with the flags
    of sam2.1_hiera_*.yaml (the same for every size) and build_sam.py's
    image-predictor overrides (dynamic multimask via stability); the
    memory attention and memory encoder empty (image mode never calls
    them). In eval mode."""
    return cls(
        image_encoder=enc, memory_attention=torch.nn.Module(), memory_encoder=torch.nn.Module(),
        num_maskmem=7, image_size=image_size, backbone_stride=16,
        sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True,
        no_obj_embed_spatial=True, use_high_res_features_in_sam=True, multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True, multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0, multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True,
        compile_image_encoder=False,
        sam_mask_decoder_extra_args=dict(dynamic_multimask_via_stability=True,
                                         dynamic_multimask_stability_delta=0.05,
                                         dynamic_multimask_stability_thresh=0.98),
    ).eval()


def tiny_sam2(mods, case, enc):
    """SAM2Base with sam2.1_hiera_t.yaml's flags (and the image predictor's
    dynamic multimask overrides), its SAM heads at the case's sizes."""
    dec = case["decoder"]

    class TinySAM2(mods.SAM2Base):
        def _build_sam_heads(self):
            # SAM2Base._build_sam_heads with the tiny sizes in place of SAM's
            self.sam_prompt_embed_dim = self.hidden_dim
            self.sam_image_embedding_size = self.image_size // self.backbone_stride
            self.sam_prompt_encoder = mods.PromptEncoder(
                embed_dim=self.sam_prompt_embed_dim,
                image_embedding_size=(self.sam_image_embedding_size, self.sam_image_embedding_size),
                input_image_size=(self.image_size, self.image_size),
                mask_in_chans=dec["mask_in_chans"],
            )
            self.sam_mask_decoder = mods.MaskDecoder(
                num_multimask_outputs=dec["multimask_outputs"],
                transformer=mods.TwoWayTransformer(depth=2, embedding_dim=self.sam_prompt_embed_dim,
                                                   mlp_dim=dec["mlp_dim"], num_heads=dec["heads"]),
                transformer_dim=self.sam_prompt_embed_dim,
                iou_head_depth=dec["iou_head_depth"],
                iou_head_hidden_dim=dec["iou_head_hidden_dim"],
                use_high_res_features=self.use_high_res_features_in_sam,
                iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
                pred_obj_scores=self.pred_obj_scores,
                pred_obj_scores_mlp=self.pred_obj_scores_mlp,
                use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
                **(self.sam_mask_decoder_extra_args or {}),
            )
            if self.use_obj_ptrs_in_encoder:
                self.obj_ptr_proj = torch.nn.Linear(self.hidden_dim, self.hidden_dim)
                if self.use_mlp_for_obj_ptr_proj:
                    self.obj_ptr_proj = mods.MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
            else:
                self.obj_ptr_proj = torch.nn.Identity()
            if self.proj_tpos_enc_in_obj_ptrs:
                self.obj_ptr_tpos_proj = torch.nn.Linear(self.hidden_dim, self.mem_dim)
            else:
                self.obj_ptr_tpos_proj = torch.nn.Identity()

    return sam2_base(TinySAM2, enc, case["image_size"])


# ---- config.json as transformers writes Sam2Config ------------------------------

def hf_config(case, trunk):
    stage_ends = trunk.stage_ends
    dims = [trunk.blocks[e].dim_out for e in stage_ends]
    heads = [trunk.blocks[e].attn.num_heads for e in stage_ends]
    s = case["image_size"]
    levels = len(dims)
    sizes = []
    g = s // 4
    for i in range(levels):
        sizes.append([g, g])
        if i < case["q_pool"]:
            g //= 2
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": case["embed_dim"],
        "num_attention_heads": case["num_heads"],
        "num_channels": 3,
        "image_size": [s, s],
        "patch_kernel_size": [7, 7],
        "patch_stride": [4, 4],
        "patch_padding": [3, 3],
        "query_stride": [2, 2],
        "window_positional_embedding_background_size": list(case["bkg"]),
        "num_query_pool_stages": case["q_pool"],
        "blocks_per_stage": list(case["stages"]),
        "embed_dim_per_stage": dims,
        "num_attention_heads_per_stage": heads,
        "window_size_per_stage": list(case["window_spec"]),
        "global_attention_blocks": list(case["global_blocks"]),
        "mlp_ratio": 4.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "initializer_range": 0.02,
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": dims[::-1],
        "backbone_feature_sizes": sizes[:levels - case["scalp"]],
        "fpn_hidden_size": case["d_model"],
        "fpn_kernel_size": case["fpn_kernel"],
        "fpn_stride": 1,
        "fpn_padding": case["fpn_padding"],
        "fpn_top_down_levels": list(case["top_down"]),
        "num_feature_levels": levels - case["scalp"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "initializer_range": 0.02,
    }
    return {
        "architectures": ["Sam2Model"],
        "model_type": "sam2",
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "vision_config": vision,
        "prompt_encoder_config": {
            "hidden_size": case["d_model"], "image_size": s, "patch_size": 16,
            "mask_input_channels": case["decoder"]["mask_in_chans"], "num_point_embeddings": 4,
            "hidden_act": "gelu", "layer_norm_eps": 1e-6, "scale": 1},
        "mask_decoder_config": {
            "hidden_size": case["d_model"], "hidden_act": "gelu", "mlp_dim": case["decoder"]["mlp_dim"],
            "num_hidden_layers": 2, "num_attention_heads": case["decoder"]["heads"],
            "attention_downsample_rate": 2, "num_multimask_outputs": case["decoder"]["multimask_outputs"],
            "iou_head_depth": case["decoder"]["iou_head_depth"],
            "iou_head_hidden_dim": case["decoder"]["iou_head_hidden_dim"],
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05, "dynamic_multimask_stability_thresh": 0.98},
    }


# ---- the cases -------------------------------------------------------------------

CASES = [
    dict(name="sam2-tiny", seed=101, image_size=128, batch=1, original_hw=(50, 70), stable_single=True,
         embed_dim=4, num_heads=1, stages=(1, 2, 7, 2), q_pool=3, window_spec=(8, 4, 14, 7),
         global_blocks=(5, 7, 9), bkg=(7, 7), d_model=16, fpn_kernel=1, fpn_padding=0, top_down=(2, 3), scalp=1,
         decoder=dict(heads=2, mlp_dim=32, multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=16,
                      mask_in_chans=16),
         prompts=dict(point=([[70.0, 41.0]], [1]), points=([[20.0, 30.0], [96.5, 88.0], [60.0, 64.0]], [1, 1, 0]),
                      box=[14.0, 22.0, 101.0, 90.0], box_points=([[40.0, 50.0], [90.0, 30.0]], [1, 0]),
                      heads=[[[33.0, 77.0]]]),
         notes="sam2.1_hiera_t's structure at 1/24 of its width (embed 4, 1 head, d_model 16) on "
               "128x128: windows 14 and 7 pad the 8x8 and 4x4 grids; decoder 2 heads, mlp 32, IoU head 3 x 16; "
               "mask token 0's hypernetwork output scaled by 64 so that its single masks are stable (dynamic "
               "multimask keeps them; -alt's fall back to the best multimask output)"),
    dict(name="sam2-tiny-alt", seed=102, image_size=80, batch=2, original_hw=(90, 60),
         embed_dim=6, num_heads=2, stages=(2, 1, 3, 1), q_pool=2, window_spec=(4, 4, 3, 2),
         global_blocks=(1, 5), bkg=(5, 3), d_model=24, fpn_kernel=3, fpn_padding=1, top_down=(0, 1), scalp=1,
         decoder=dict(heads=3, mlp_dim=20, multimask_outputs=2, iou_head_depth=2, iou_head_hidden_dim=10,
                      mask_in_chans=8),
         prompts=dict(point=([[11.0, 52.0]], [1]), points=([[60.0, 20.0], [15.5, 70.0], [40.0, 40.0]], [0, 1, 1]),
                      box=[5.0, 9.0, 66.0, 47.0], box_points=([[30.0, 30.0], [70.0, 75.0]], [0, 1]),
                      heads=[[[25.0, 18.0]], [[61.0, 49.0]]]),
         notes="q_pool 2: block 2 pools q in 4x4 windows of the 20x20 grid, block 3 in 4x4 "
               "windows padded over the 10x10 grid; global blocks 1 (400 tokens) and 5; block 6 changes width "
               "without pooling; window 3 pads 5x5; background position embedding 5x3; 3x3 neck convolutions; "
               "top-down levels 0, 1; scalp 1; a batch of 2 (prompts on the second image, the heads on both); "
               "decoder d_model 24, 3 heads, mlp 20, 2 multimask outputs, IoU head 2 x 10, mask_in_chans 8"),
]


def smooth_image(gen, b, s):
    small = torch.rand((b, 3, s // 8, s // 8), generator=gen) * 2 - 1
    img = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    return img * 2 + 0.1 * torch.randn((b, 3, s, s), generator=gen)


def make(case, mods, out_root, commit):
    enc = image_encoder(mods, case)
    trunk = enc.trunk
    model = tiny_sam2(mods, case, enc)

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = common.randomize(shapes, case["seed"])
    rng = np.random.default_rng(case["seed"] + 1000)
    for k in ("image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed_window", "no_mem_embed"):
        weights[k] = (0.5 * rng.standard_normal(shapes[k])).astype(np.float16)   # large enough to matter
    if case.get("stable_single"):
        # token 0's hypernetwork output scaled by 2^6 (exact in float16): its masks have few logits
        # within +-delta, so the single-mask output is stable and dynamic multimask keeps it
        for k in ("sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
                  "sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.bias"):
            weights[k] = (weights[k].astype(np.float32) * 64).astype(np.float16)
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}, strict=True)

    gen = torch.Generator().manual_seed(case["seed"])
    px = smooth_image(gen, case["batch"], case["image_size"])
    out = enc(px)
    stages = trunk(px)
    ref = {"pixel_values": px}
    for i, t in enumerate(stages):
        ref[f"trunk.{i}"] = t
    for i, t in enumerate(out["backbone_fpn"]):
        ref[f"backbone_fpn.{i}"] = t
    for i, t in enumerate(out["vision_pos_enc"]):
        ref[f"vision_pos_enc.{i}"] = t
    ref["vision_features"] = out["vision_features"]

    # SAM2ImagePredictor.set_image after its transforms, with the tiny sizes
    backbone_out = model.forward_image(px)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [f.permute(1, 2, 0).view(px.shape[0], -1, *s)
             for f, s in zip(vision_feats[::-1], feat_sizes[::-1])][::-1]
    image_embed, high_res = feats[-1], feats[:-1]
    ref["image_embed"] = image_embed
    for i, t in enumerate(high_res):
        ref[f"high_res_feats.{i}"] = t

    predictor = mods.SAM2ImagePredictor(model, mask_threshold=0.0, max_hole_area=0.0, max_sprinkle_area=0.0)
    predictor._features = {"image_embed": image_embed, "high_res_feats": high_res}
    predictor._orig_hw = [tuple(case["original_hw"])] * px.shape[0]
    predictor._is_image_set = True
    predictor._is_batch = px.shape[0] > 1
    ref["original_hw"] = torch.tensor(case["original_hw"], dtype=torch.int64)
    seen = {}
    hook = model.sam_mask_decoder.register_forward_hook(lambda m, i, o: seen.update(out=o))
    img = px.shape[0] - 1   # the last image of the batch

    def predict(name, coords=None, labels=None, box=None, mask_input=None, multimask=False):
        p = {}
        if coords is not None:
            p["point_coords"] = torch.tensor([coords], dtype=torch.float32)
            p["point_labels"] = torch.tensor([labels], dtype=torch.int32)
        if box is not None:
            p["boxes"] = torch.tensor([box], dtype=torch.float32)
        if mask_input is not None:
            p["mask_input"] = mask_input
        masks, iou, low = predictor._predict(p.get("point_coords"), p.get("point_labels"), p.get("boxes"),
                                             p.get("mask_input"), multimask_output=multimask,
                                             return_logits=True, img_idx=img)
        low_res, iou_dec, _, obj = seen["out"]
        assert torch.equal(iou_dec, iou) and torch.equal(low_res.clamp(-32.0, 32.0), low)
        base = name.split(".")[0]
        for k, v in p.items():
            if k != "mask_input" or base not in ("point",):
                ref[f"prompt.{base}.{k}"] = v
        ref[f"{name}.low_res_masks"] = low_res
        ref[f"{name}.iou_predictions"] = iou
        ref[f"{name}.object_score_logits"] = obj
        ref[f"{name}.masks"] = masks
        return low_res, iou

    pr = case["prompts"]
    low, iou = predict("point.multi", *pr["point"], multimask=True)
    predict("point.single", *pr["point"], multimask=False)
    predict("points", *pr["points"])
    predict("box", box=pr["box"])
    predict("box_points", *pr["box_points"], box=pr["box"])
    best = int(iou[0].argmax())
    predict("mask", *pr["point"], mask_input=low[:, best:best + 1])
    hook.remove()

    # SAM2Base._forward_sam_heads on every image, one point each
    coords = torch.tensor(pr["heads"], dtype=torch.float32)
    point_inputs = {"point_coords": coords, "point_labels": torch.ones(coords.shape[:2], dtype=torch.int32)}
    multimask = model._use_multimask(True, point_inputs)
    low_multi, _, ious, low_best, _, _, obj = model._forward_sam_heads(
        backbone_features=image_embed, point_inputs=point_inputs, mask_inputs=None,
        high_res_features=high_res, multimask_output=multimask)
    ref["heads.point_coords"] = point_inputs["point_coords"]
    ref["heads.point_labels"] = point_inputs["point_labels"]
    ref["heads.low_res_multimasks"] = low_multi
    ref["heads.ious"] = ious
    ref["heads.low_res_masks"] = low_best
    ref["heads.object_score_logits"] = obj

    name = os.path.join(out_root, case["name"])
    os.makedirs(name, exist_ok=True)
    common.save_safetensors(os.path.join(name, "model.safetensors"),
                            {k: v.astype(np.float32) for k, v in hf_weights(weights).items()})
    with open(os.path.join(name, "config.json"), "w") as f:
        json.dump(hf_config(case, trunk), f, indent=2, sort_keys=True)
        f.write("\n")
    ref = {k: v.detach().contiguous().numpy() for k, v in ref.items()}
    ref = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in ref.items()}
    common.save_safetensors(os.path.join(name, "ref.safetensors"), ref)
    meta = {
        "family": "sam2", "model_class": "Sam2Model",
        "reference": "facebookresearch/sam2: SAM2Base (sam2_base.py) built with Hiera, FpnNeck, ImageEncoder, "
                     "PromptEncoder, TwoWayTransformer and MaskDecoder at tiny sizes; "
                     "SAM2ImagePredictor._predict; SAM2Base._forward_sam_heads",
        "reference_commit": commit, "torch": torch.__version__,
        "notes": "made by tests/tools/make_sam2_fixtures.py; " + case["notes"] +
                 "; F.scaled_dot_product_attention supplied as softmax(q k^T / sqrt(d)) v (torch 1.13); "
                 "prompts in the input frame (pixels of the SxS input); prompt.mask.mask_input is the best "
                 "(highest IoU) low-res mask of point.multi; object scores: " +
                 ", ".join("%s %.3f" % (k[:-len(".object_score_logits")], float(v.reshape(-1)[0]))
                           for k, v in sorted(ref.items()) if k.endswith("object_score_logits")),
        "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in ref.items()},
    }
    with open(os.path.join(name, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", name, len(ref), "tensors;",
          "trunk", [tuple(t.shape) for t in stages], "fpn", [tuple(t.shape) for t in out["backbone_fpn"]])
    for k in sorted(ref):
        if k.endswith("iou_predictions") or k.endswith("object_score_logits") or k == "heads.ious":
            print("  ", k, ref[k].reshape(-1).round(4).tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam2", required=True, help="facebookresearch/sam2 checkout or extracted archive")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    mods = import_sam2(args.sam2)
    commit = common.git_commit(args.sam2)
    for case in CASES:
        make(case, mods, args.out, commit)


if __name__ == "__main__":
    main()
