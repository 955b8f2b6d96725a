"""Qwen-Image family: QwenImageTransformer2DModel + AutoencoderKLQwenImage + the Qwen2.5-VL text encoder.

Profile keys as diffusion-pipe's models/qwen_image.py reads them: `diffusers_path` (a QwenImagePipeline folder)
and the optional overrides `transformer_path` (ComfyUI / diffusers-named single file, or a transformer folder),
`text_encoder_path` (the Qwen2.5-VL file, e.g. ComfyUI's qwen_2.5_vl_7b.safetensors, or a folder) and `vae_path`
(the diffusers VAE file or folder; ComfyUI's VAE key names are not supported, as upstream). An override wins over
the folder's subfolder. Unlike diffusion-pipe, which ships the configs and tokenizer in its repo, dpdeck reads
them from `diffusers_path` (tokenizer/ and each part's config.json), so the built-in trainer needs that folder.

Text as QwenImagePipeline encodes it: the prompt in the chat template below, the VL model's last hidden state,
the real (unpadded) tokens kept and the template's first 34 dropped. Each caption's embedding is cached at its
own length; a batch is padded to its longest with encoder_hidden_states_mask marking the real tokens, which the
transformer turns into the joint text+image attention mask (diffusion-pipe's padding fix, now in diffusers).

Flow matching with diffusion-pipe's qwen_image semantics, the same as Flux's (engine.trainer.flow): t in (0, 1)
goes to the transformer as is (it scales by 1000 itself), latents packed 2x2, `flux_shift` counts packed tokens.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from engine.trainer import flow
from engine.trainer.family import (
    ModelLoadError,
    detect_folder_family,
    detect_single_file_family,
    file_identity,
    folder_identity,
)
from engine.trainer.flow_family import FlowFamily

# QwenImagePipeline's text-to-image prompt template and how many of its leading tokens are dropped (diffusers
# 0.42 pipeline_qwenimage.py; diffusion-pipe's prompt_template_encode / _start_idx hold the same).
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEMPLATE_DROP = 34
TOKENIZER_MAX_LENGTH = 1024
BLOCK_PREFIX = "transformer_blocks."
# ComfyUI files may carry the checkpoint prefix; the tensor names below it are diffusers'.
COMFY_PREFIX = "model.diffusion_model."

# Each part: the profile key that overrides it, and its subfolder of diffusers_path.
PARTS: dict[str, tuple[str, str]] = {
    "transformer": ("transformer_path", "transformer"),
    "text_encoder": ("text_encoder_path", "text_encoder"),
    "vae": ("vae_path", "vae"),
}
# Tensor names that tell a Qwen2.5-VL text encoder file (either transformers layout) from T5 / CLIP / Gemma.
TEXT_ENCODER_MARKS = (
    ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
    ("visual.", "model.visual."),
)


def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ModelLoadError(f"{path}: no .safetensors files")
    return files


def _keys_of(path: Path) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for f in _safetensors_files(path):
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys.extend(fh.keys())
        except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable safetensors file"
            raise ModelLoadError(f"{f}: cannot read as safetensors ({exc})") from exc
    return keys


def _config_class(folder: Path, what: str) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{what}: {folder} has no config.json")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: unreadable ({exc})") from exc
    return str(data.get("_class_name") or (data.get("architectures") or ["unknown"])[0])


@contextmanager
def _linked_folder(config: Path, weight_name: str, weights: Path) -> Iterator[Path]:
    """A temporary folder holding a copy of `config` and `weight_name` linking to `weights`, for from_pretrained."""
    with tempfile.TemporaryDirectory(prefix="dpdeck-qwen-") as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_bytes(config.read_bytes())
        (folder / weight_name).symlink_to(weights.resolve())
        yield folder


def _load_prefixed(cls: Any, config: Path, path: Path, dtype: torch.dtype) -> Any:
    """A file whose tensor names carry ComfyUI's checkpoint prefix: built from the config, the prefix dropped
    (needs the model once in float32 in RAM, unlike the linked-folder route)."""
    from safetensors.torch import load_file

    model = cls.from_config(cls.load_config(str(config.parent)))
    model.load_state_dict({k.removeprefix(COMFY_PREFIX): v for k, v in load_file(str(path)).items()})
    return model.to(dtype)


class QwenImage(FlowFamily):
    name = "qwen_image"
    # diffusion_model.<diffusers key>: the names ComfyUI and diffusion-pipe's save hook use for Qwen-Image.
    comfy_layout = "qwen_image"
    pipeline_class_name = "QwenImagePipeline"
    block_prefixes = (BLOCK_PREFIX,)  # the QwenImageTransformerBlocks, as diffusion-pipe

    def __init__(self, model_cfg: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(model_cfg, dtype, device)
        self.text_encoder: Any = None
        self.tokenizer: Any = None

    def _pipeline_cls(self) -> Any:
        from diffusers import QwenImagePipeline

        return QwenImagePipeline

    # ---- where each part comes from ----------------------------------------------------------------------
    def _root(self) -> Path:
        if not self.cfg.get("diffusers_path"):
            raise ModelLoadError(
                "model.diffusers_path: required for qwen_image on the built-in trainer (a Qwen-Image diffusers "
                "folder: its tokenizer/ and config files are read even when transformer_path, "
                "text_encoder_path and vae_path are given)"
            )
        return Path(self.cfg["diffusers_path"]).expanduser()

    def _source(self, part: str) -> tuple[Path, str]:
        """The file or folder a part's weights come from, and the profile key that names it."""
        key, sub = PARTS[part]
        raw = self.cfg.get(key)
        if raw:
            return Path(raw).expanduser(), f"model.{key}"
        return self._root() / sub, f"model.diffusers_path ({sub}/)"

    # ---- checks ------------------------------------------------------------------------------------------
    def check_family(self) -> None:
        root = self._root()
        if not root.is_dir():
            raise ModelLoadError(f"model.diffusers_path: {root} is not a directory")
        found = detect_folder_family(root)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = '{self.name}' but model.diffusers_path {root} holds a {found} model; "
                "expected a Qwen-Image diffusers folder (QwenImagePipeline in model_index.json)"
            )
        for sub in ("tokenizer", *(s for _, s in PARTS.values())):
            if not (root / sub).is_dir():
                raise ModelLoadError(f"model.diffusers_path: {root} has no {sub}/ folder")
        self._check_transformer()
        self._check_text_encoder()
        vae, what = self._source("vae")
        if not vae.exists():
            raise ModelLoadError(f"{what}: {vae} does not exist")

    def _check_transformer(self) -> None:
        path, what = self._source("transformer")
        if path.is_dir():
            cls = _config_class(path, what)
            if cls != "QwenImageTransformer2DModel":
                raise ModelLoadError(
                    f"{what}: {path} holds a {cls}; qwen_image needs a QwenImageTransformer2DModel"
                )
            return
        if not path.is_file():
            raise ModelLoadError(f"{what}: {path} is not a file or folder")
        found = detect_single_file_family(path)
        if found != self.name:
            raise ModelLoadError(
                f"model.type = '{self.name}' but {what} {path} holds a {found} transformer; "
                "fix model.type or the path"
            )

    def _check_text_encoder(self) -> None:
        path, what = self._source("text_encoder")
        if not path.exists():
            raise ModelLoadError(f"{what}: {path} does not exist")
        keys = _keys_of(path)
        for alternatives in TEXT_ENCODER_MARKS:
            # A name ending in "." is a prefix; any other must match exactly.
            if not any(k == a or (a.endswith(".") and k.startswith(a)) for k in keys for a in alternatives):
                raise ModelLoadError(
                    f"{what}: {path} is not a Qwen2.5-VL text encoder (no {' / '.join(alternatives)} tensors; "
                    f"found e.g. {', '.join(sorted(keys)[:3])})"
                )

    # ---- loading -----------------------------------------------------------------------------------------
    def load(self) -> None:
        self.check_family()
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2Tokenizer

        root = self._root()
        self.tokenizer = Qwen2Tokenizer.from_pretrained(root, subfolder="tokenizer")
        self.vae = self._load_diffusers_part("vae", AutoencoderKLQwenImage, torch.float32)
        self.text_encoder = self._load_text_encoder()
        self.transformer = self._load_diffusers_part("transformer", QwenImageTransformer2DModel, self.dtype)
        self.unet = self.transformer  # the loop's name for the denoiser
        self.vae.requires_grad_(False).to(self.device)
        self.transformer.requires_grad_(False)
        self.text_encoder.requires_grad_(False).to(self.device, dtype=self.dtype)

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    def _load_diffusers_part(self, part: str, cls: Any, dtype: torch.dtype) -> Any:
        """From its diffusers folder, or a file with diffusers_path/<part>/config.json as its config."""
        path, what = self._source(part)
        if path.is_dir():
            return cls.from_pretrained(path, torch_dtype=dtype)
        config = self._root() / PARTS[part][1] / "config.json"
        hint = " (ComfyUI's VAE is not supported: give the diffusers VAE)" if part == "vae" else ""
        raw = _keys_of(path)
        keys = {k.removeprefix(COMFY_PREFIX) for k in raw}
        # diffusers' loader leaves a tensor the file lacks uninitialised (meta): compare the names first.
        with torch.device("meta"):
            expected = set(cls.from_config(cls.load_config(str(config.parent))).state_dict())
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        if missing or unexpected:
            raise ModelLoadError(
                f"{what}: {path} does not match diffusers_path's {config.parent.name}/config.json{hint}: missing "
                f"{len(missing)} tensors (e.g. {missing[:2]}), unexpected {len(unexpected)} (e.g. {unexpected[:2]})"
            )
        if any(k.startswith(COMFY_PREFIX) for k in raw):
            return _load_prefixed(cls, config, path, dtype)
        # diffusers' own loader (low memory, straight to dtype) on a folder linking the config and the file.
        with _linked_folder(config, "diffusion_pytorch_model.safetensors", path) as folder:
            return cls.from_pretrained(folder, torch_dtype=dtype)

    def _load_text_encoder(self) -> torch.nn.Module:
        from transformers import Qwen2_5_VLForConditionalGeneration

        path, what = self._source("text_encoder")

        def load(folder: Path) -> torch.nn.Module:
            try:
                model: torch.nn.Module = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    folder, dtype=self.dtype
                )
            except Exception as exc:  # noqa: BLE001 - surface the path with the loader's reason
                raise ModelLoadError(f"{what}: {path}: cannot load as Qwen2.5-VL ({exc})") from exc
            return model

        if path.is_dir():
            return load(path)
        # A single file goes through transformers' own loader (and its key-layout conversion).
        with _linked_folder(
            self._root() / "text_encoder" / "config.json", "model.safetensors", path
        ) as folder:
            return load(folder)

    def identity(self, part: str) -> str:
        def ident(path: Path) -> str:
            return folder_identity(path) if path.is_dir() else file_identity(path)

        if part == "vae":
            return ident(self._source("vae")[0])
        text = ident(self._source("text_encoder")[0])
        tok = folder_identity(self._root() / "tokenizer")
        return f"{text}|{tok}|{self.dtype}|{TEMPLATE_DROP}:{PROMPT_TEMPLATE}"

    # ---- encoding ----------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        # As QwenImagePipeline: one spatial halving per temporal-downsample flag (8 for the real VAE).
        return 2 ** len(self.vae.temperal_downsample) if self.vae is not None else 8

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        # The video VAE takes (B, C, frames, H, W); an image is one frame.
        dist = vae.encode(pixels.to(self.device, torch.float32)[:, :, None]).latent_dist
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=self.device).view(shape)
        std = torch.tensor(vae.config.latents_std, device=self.device).view(shape)
        # The mode (= mean) keeps the cache deterministic, as diffusion-pipe and the Edit pipeline take it.
        latents: torch.Tensor = (dist.mode() - mean) / std
        return latents[:, :, 0].float().cpu()

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        tokens = self.tokenizer(
            [PROMPT_TEMPLATE.format(c) for c in captions],
            max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP,
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        out = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True
        )
        hidden = out.hidden_states[-1]
        return [
            {"prompt_embeds": h[m.bool()][TEMPLATE_DROP:].cpu()} for h, m in zip(hidden, mask, strict=True)
        ]

    def collate_text(self, texts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad each caption's embedding to the batch's longest; the mask marks the real tokens."""
        embeds = [t["prompt_embeds"] for t in texts]
        longest = max(e.shape[0] for e in embeds)
        padded = torch.stack([torch.cat([e, e.new_zeros(longest - e.shape[0], e.shape[1])]) for e in embeds])
        mask = torch.stack([torch.arange(longest) < e.shape[0] for e in embeds]).long()
        return {"prompt_embeds": padded, "prompt_embeds_mask": mask}

    def unet_kwargs(
        self, text: dict[str, torch.Tensor], image_meta: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        return {
            "encoder_hidden_states": text["prompt_embeds"].to(self.device, self.dtype),
            "encoder_hidden_states_mask": text["prompt_embeds_mask"].to(self.device),
        }

    # ---- forward -----------------------------------------------------------------------------------------
    def denoise(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        b, _, h, w = noisy.shape
        tokens = flow.pack_latents(noisy)
        out = model(
            hidden_states=tokens,
            timestep=t.to(tokens.dtype),
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            **kwargs,
        ).sample
        return flow.unpack_latents(out, h, w)
