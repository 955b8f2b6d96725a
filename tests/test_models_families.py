"""Family detection and header parsing on tiny safetensors files written here (sparse: realistic shapes,
a few KB on disk)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.models.errors import HeaderError
from engine.models.families import identify
from engine.models.safetensors_header import read_header, write_header_only

DM = "model.diffusion_model."


def _sd_unet(prefix: str, ctx: int, sdxl: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    t = {
        f"{prefix}input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
        f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F16", (320, ctx)),
        f"{prefix}out.2.weight": ("F16", (4, 320, 3, 3)),
    }
    if sdxl:
        t[f"{prefix}label_emb.0.0.weight"] = ("F16", (1280, 2816))
    return t


def _flux_bfl(prefix: str, guidance: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    t = {
        f"{prefix}img_in.weight": ("BF16", (3072, 64)),
        f"{prefix}txt_in.weight": ("BF16", (3072, 4096)),
        f"{prefix}double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
        f"{prefix}double_blocks.0.img_mod.lin.weight": ("BF16", (18432, 3072)),
        f"{prefix}single_blocks.0.linear1.weight": ("BF16", (21504, 3072)),
        f"{prefix}time_in.in_layer.weight": ("BF16", (3072, 256)),
        f"{prefix}vector_in.in_layer.weight": ("BF16", (3072, 768)),
    }
    if guidance:
        t[f"{prefix}guidance_in.in_layer.weight"] = ("BF16", (3072, 256))
    return t


CASES: dict[str, tuple[dict[str, tuple[str, tuple[int, ...]]], str | None, str, str | None]] = {
    # name: (tensors, family, kind, variant substring)
    "sd15_ckpt": ({**_sd_unet(DM, 768, False),
                   "first_stage_model.decoder.conv_in.weight": ("F16", (512, 4, 3, 3)),
                   "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ("F16", (49408, 768))},
                  "sd15", "checkpoint", None),
    "sdxl_ckpt": ({**_sd_unet(DM, 2048, True),
                   "first_stage_model.decoder.conv_in.weight": ("F16", (512, 4, 3, 3)),
                   "conditioner.embedders.1.model.token_embedding.weight": ("F16", (49408, 1280))},
                  "sdxl", "checkpoint", None),
    "sdxl_vpred": ({**_sd_unet(DM, 2048, True), "first_stage_model.x": ("F16", (1,)), "v_pred": ("F32", ())},
                   "sdxl", "checkpoint", "v-prediction"),
    "sdxl_unet_only": (_sd_unet("", 2048, True), "sdxl", "unet", None),
    "sd2": (_sd_unet(DM, 1024, False), None, "unet", "sd2"),
    "flux_dev": (_flux_bfl("", True), "flux", "transformer", "dev"),
    "flux_schnell_ckpt": (_flux_bfl(DM, False), "flux", "transformer", "schnell"),
    "flux_diffusers": ({"x_embedder.weight": ("BF16", (3072, 64)), "context_embedder.weight": ("BF16", (3072, 4096)),
                        "single_transformer_blocks.0.attn.to_q.weight": ("BF16", (3072, 3072)),
                        "time_text_embed.timestep_embedder.linear_1.weight": ("BF16", (3072, 256)),
                        "time_text_embed.guidance_embedder.linear_1.weight": ("BF16", (3072, 256))},
                       "flux", "transformer", "dev"),
    "chroma": ({"img_in.weight": ("BF16", (3072, 64)),
                "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
                "single_blocks.0.linear1.weight": ("BF16", (21504, 3072)),
                "distilled_guidance_layer.in_proj.weight": ("BF16", (5120, 64))},
               "chroma", "transformer", None),
    "sd3_medium": ({f"joint_blocks.{i}.x_block.attn.qkv.weight": ("F16", (4608, 1536)) for i in range(24)}
                   | {"x_embedder.proj.weight": ("F16", (1536, 16, 2, 2)), "context_embedder.weight": ("F16", (1536, 4096))},
                   "sd3", "transformer", "medium"),
    "wan_1_3b": ({"patch_embedding.weight": ("BF16", (1536, 16, 1, 2, 2)),
                  "blocks.0.self_attn.q.weight": ("BF16", (1536, 1536)),
                  "blocks.0.cross_attn.k.weight": ("BF16", (1536, 1536)),
                  "text_embedding.0.weight": ("BF16", (1536, 4096))}, "wan", "transformer", "1.3B t2v"),
    "wan_14b_i2v": ({"patch_embedding.weight": ("BF16", (5120, 36, 1, 2, 2)),
                     "blocks.0.self_attn.q.weight": ("BF16", (5120, 5120)),
                     "blocks.0.cross_attn.k.weight": ("BF16", (5120, 5120)),
                     "blocks.0.cross_attn.k_img.weight": ("BF16", (5120, 5120))}, "wan", "transformer", "14B i2v"),
    "ltx": ({f"{DM}patchify_proj.weight": ("BF16", (2048, 128)),
             f"{DM}adaln_single.emb.timestep_embedder.linear_1.weight": ("BF16", (2048, 256)),
             f"{DM}transformer_blocks.0.attn1.to_q.weight": ("BF16", (2048, 2048)),
             "vae.decoder.conv_in.conv.weight": ("BF16", (1024, 128, 3, 3, 3))}, "ltx-video", "checkpoint", None),
    "hunyuan_video": ({"img_in.proj.weight": ("BF16", (3072, 16, 1, 2, 2)),
                       "txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight": ("BF16", (12288, 3072)),
                       "double_blocks.0.img_attn_qkv.weight": ("BF16", (9216, 3072)),
                       "single_blocks.0.linear1.weight": ("BF16", (21504, 3072))}, "hunyuan-video", "transformer", None),
    "lumina2": ({f"{DM}x_embedder.weight": ("BF16", (2304, 64)),
                 f"{DM}cap_embedder.1.weight": ("BF16", (2304, 2304)),
                 f"{DM}layers.0.attention.qkv.weight": ("BF16", (3840, 2304)),
                 f"{DM}noise_refiner.0.attention.qkv.weight": ("BF16", (3840, 2304))}, "lumina_2", "transformer", None),
    "lumina2_diffusers": ({"x_embedder.weight": ("BF16", (2304, 64)),
                           "time_caption_embed.caption_embedder.1.weight": ("BF16", (2304, 2304)),
                           "layers.0.attn.to_q.weight": ("BF16", (2304, 2304))}, "lumina_2", "transformer", None),
    "qwen_image": ({"img_in.weight": ("BF16", (3072, 64)), "txt_in.weight": ("BF16", (3072, 3584)),
                    "txt_norm.weight": ("BF16", (3584,)),
                    "transformer_blocks.0.img_mod.1.weight": ("BF16", (18432, 3072)),
                    "transformer_blocks.0.attn.add_q_proj.weight": ("BF16", (3072, 3072))},
                   "qwen_image", "transformer", None),
    "auraflow": ({"double_layers.0.attn.w1q.weight": ("F16", (3072, 3072)),
                  "single_layers.0.attn.w1q.weight": ("F16", (3072, 3072)),
                  "cond_seq_linear.weight": ("F16", (3072, 2048)), "register_tokens": ("F16", (1, 8, 3072))},
                 "auraflow", "transformer", None),
    # Key names and shapes below are those of diffusers' own classes at full size (instantiated on the meta
    # device: Flux2Transformer2DModel, ZImageTransformer2DModel, HiDreamImageTransformer2DModel,
    # CosmosTransformer3DModel) and of the original checkpoints' layouts.
    "flux2_diffusers": ({"x_embedder.weight": ("BF16", (6144, 128)), "context_embedder.weight": ("BF16", (6144, 15360)),
                         "double_stream_modulation_img.linear.weight": ("BF16", (36864, 6144)),
                         "double_stream_modulation_txt.linear.weight": ("BF16", (36864, 6144)),
                         "single_stream_modulation.linear.weight": ("BF16", (18432, 6144)),
                         "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight": ("BF16", (55296, 6144)),
                         "time_guidance_embed.timestep_embedder.linear_1.weight": ("BF16", (6144, 256))},
                        "flux2", "transformer", "dev"),
    "flux2_bfl_ckpt": ({f"{DM}img_in.weight": ("BF16", (3072, 128)),
                        f"{DM}double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
                        f"{DM}double_stream_modulation_img.lin.weight": ("BF16", (18432, 3072)),
                        f"{DM}single_stream_modulation.lin.weight": ("BF16", (9216, 3072))},
                       "flux2", "transformer", "hidden size 3072"),
    "z_image_diffusers": ({"all_x_embedder.2-1.weight": ("BF16", (3840, 64)), "x_pad_token": ("BF16", (1, 3840)),
                           "cap_pad_token": ("BF16", (1, 3840)), "cap_embedder.0.weight": ("BF16", (2560,)),
                           "layers.0.attention.to_q.weight": ("BF16", (3840, 3840)),
                           "layers.0.attention_norm1.weight": ("BF16", (3840,)),
                           "noise_refiner.0.attention.to_q.weight": ("BF16", (3840, 3840))},
                          "z_image", "transformer", None),
    "z_image_comfy": ({f"{DM}x_embedder.weight": ("BF16", (3840, 64)), f"{DM}cap_embedder.1.weight": ("BF16", (3840, 2560)),
                       f"{DM}layers.0.attention.qkv.weight": ("BF16", (11520, 3840))}, "z_image", "transformer", None),
    "hidream": ({"x_embedder.proj.weight": ("BF16", (2560, 64)),
                 "double_stream_blocks.0.block.adaLN_modulation.1.weight": ("BF16", (30720, 2560)),
                 "double_stream_blocks.0.block.ff_i.gate.weight": ("BF16", (4, 2560)),
                 "single_stream_blocks.0.block.ff_i.experts.0.w1.weight": ("BF16", (6912, 2560)),
                 "caption_projection.0.linear.weight": ("BF16", (2560, 4096))}, "hidream", "transformer", None),
    "cosmos_predict2_2b": ({"net.x_embedder.proj.1.weight": ("BF16", (2048, 68)),
                            "net.blocks.0.self_attn.q_proj.weight": ("BF16", (2048, 2048)),
                            "net.blocks.0.cross_attn.k_proj.weight": ("BF16", (2048, 1024)),
                            "net.blocks.0.adaln_modulation_self_attn.1.weight": ("BF16", (256, 2048)),
                            "net.t_embedder.1.linear_1.weight": ("BF16", (2048, 2048))},
                           "cosmos_predict2", "transformer", "2B"),
    "cosmos1_nvidia": ({"net.x_embedder.proj.1.weight": ("BF16", (4096, 68)),
                        "net.blocks.block0.blocks.0.block.attn.to_q.0.weight": ("BF16", (4096, 4096)),
                        "net.t_embedder.1.linear_1.weight": ("BF16", (4096, 4096))}, "cosmos", "transformer", None),
    "cosmos1_diffusers": ({"patch_embed.proj.weight": ("BF16", (4096, 68)),
                           "learnable_pos_embed.pos_emb_t": ("BF16", (128, 4096)),
                           "time_embed.t_embedder.linear_1.weight": ("BF16", (4096, 4096)),
                           "transformer_blocks.0.norm1.linear_1.weight": ("BF16", (256, 4096))},
                          "cosmos", "transformer", None),
    "cosmos_predict2_diffusers": ({"patch_embed.proj.weight": ("BF16", (2048, 68)),
                                   "time_embed.t_embedder.linear_1.weight": ("BF16", (2048, 2048)),
                                   "transformer_blocks.0.norm1.linear_1.weight": ("BF16", (256, 2048))},
                                  "cosmos_predict2", "transformer", None),
    "flux_vae": ({"decoder.conv_in.weight": ("F32", (512, 16, 3, 3)),
                  "encoder.conv_in.weight": ("F32", (128, 3, 3, 3))}, None, "vae", "16-channel"),
    "t5xxl": ({"encoder.block.0.layer.0.SelfAttention.q.weight": ("F16", (4096, 4096)),
               "shared.weight": ("F16", (32128, 4096))}, None, "text_encoder", "T5"),
    "umt5": ({"encoder.block.0.layer.0.SelfAttention.q.weight": ("BF16", (4096, 4096)),
              "shared.weight": ("BF16", (256384, 4096))}, None, "text_encoder", "UMT5"),
    "clip_l": ({"text_model.embeddings.token_embedding.weight": ("F16", (49408, 768)),
                "text_model.encoder.layers.0.mlp.fc1.weight": ("F16", (3072, 768))}, None, "text_encoder", "CLIP-L"),
    "lora": ({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": ("F16", (16, 320)),
              "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": ("F16", (320, 16)),
              "lora_unet_input_blocks_1_1_proj_in.alpha": ("F16", ())}, None, "lora", None),
    "unknown": ({"foo.bar": ("F32", (3, 3))}, None, "unknown", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_identify_family(tmp_path: Path, name: str) -> None:
    tensors, family, kind, variant = CASES[name]
    path = tmp_path / f"{name}.safetensors"
    write_header_only(path, tensors)
    header = read_header(path)
    assert len(header.tensors) == len(tensors)
    ident = identify(header)
    assert (ident.family, ident.kind) == (family, kind), ident
    if variant is not None:
        assert ident.variant is not None and variant in ident.variant, ident
    assert ident.evidence


def test_sparse_file_reports_full_size_and_dtype(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    write_header_only(path, _flux_bfl("", True))
    header = read_header(path)
    expected = sum(2 * np.prod(s) for _d, s in _flux_bfl("", True).values())
    assert header.file_size == 8 + header.header_size + expected
    assert header.main_dtype == "BF16"
    assert path.stat().st_blocks * 512 < 1 << 20  # sparse: the "GBs" cost no disk


def test_header_written_by_safetensors_library(tmp_path: Path) -> None:
    path = tmp_path / "lib.safetensors"
    save_file({"img_in.weight": np.zeros((8, 4), np.float16),
               "double_blocks.0.img_attn.qkv.weight": np.ones((6, 8), np.float32),
               "distilled_guidance_layer.in_proj.weight": np.zeros((2, 2), np.float16)},
              str(path), metadata={"modelspec.title": "tiny"})
    header = read_header(path)
    assert header.tensors["double_blocks.0.img_attn.qkv.weight"].shape == (6, 8)
    assert header.tensors["double_blocks.0.img_attn.qkv.weight"].dtype == "F32"
    assert header.metadata == {"modelspec.title": "tiny"}
    assert header.parameters == 8 * 4 + 6 * 8 + 4
    assert identify(header).family == "chroma"


def _short(path: Path) -> Path:
    path.write_bytes(b"abc")
    return path


def _raw(path: Path, header: bytes, length: int | None = None, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: _short(p), "shorter than the 8-byte length prefix"),
        (lambda p: _raw(p, b"{}", length=0), "header length is 0"),
        (lambda p: _raw(p, b'{"a":1}', length=1 << 40), "larger than"),
        (lambda p: _raw(p, b'{"a":1}', length=500), "runs past the end"),
        (lambda p: _raw(p, b"{not json"), "not valid JSON"),
        (lambda p: _raw(p, b"\xff\xfe\xfd"), "not UTF-8"),
        (lambda p: _raw(p, b"[1, 2]"), "is a list, expected an object"),
        (lambda p: _raw(p, json.dumps({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}).encode(), data=b"x"),
         "unknown dtype"),
        (lambda p: _raw(p, json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()),
         "not a list of non-negative integers"),
        (lambda p: _raw(p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}}).encode()),
         "begin <= end"),
        (lambda p: _raw(p, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
                        data=b"\0" * 8), "truncated"),
    ],
    ids=["tiny", "zero", "huge", "past-eof", "json", "utf8", "not-object", "dtype", "shape", "offsets", "truncated"],
)
def test_malformed_headers_have_specific_messages(tmp_path: Path, make, needle: str) -> None:
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(HeaderError, match="not a valid safetensors file") as exc:
        read_header(path)
    assert needle in str(exc.value)
    assert str(path) in str(exc.value)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HeaderError, match="is a directory, expected a .safetensors file"):
        read_header(tmp_path)
    with pytest.raises(HeaderError, match="file not found"):
        read_header(tmp_path / "nope.safetensors")
