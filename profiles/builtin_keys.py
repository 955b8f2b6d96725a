"""Keys dpdeck's built-in trainer (engine/trainer: sd15, sdxl) reads beyond what diffusion-pipe reads.

For a profile on the built-in backend a key is known when diffusion-pipe reads it (`profiles.dp_keys`) or this
table lists it; engine/trainer/config.py, main.py, family.py and sd15.py are where they are read. Plain data:
tests/test_profiles_schema.py checks that every literal key those files read is here or in diffusion-pipe's.
"""

from __future__ import annotations

BUILTIN_TRAINER_KEYS: dict[str, frozenset[str]] = {
    "main": frozenset(
        {
            "seed",
            "zero_stage",
            "checkpoint_every_n_steps",
            "sample",
            "plain_step",
        }
    ),
    "model": frozenset(
        {
            "diffusers_path",
            "diffusers_config",
            "checkpoint_path",
            "v_pred",
            "unet_lr",
            "text_encoder_lr",
            "text_encoder_1_lr",
            "text_encoder_2_lr",
            "min_snr_gamma",
            "debiased_estimation_loss",
            "caption_dropout",
            "uncond_fraction",
            "noise_offset",
            "zero_terminal_snr",
            "compile",
        }
    ),
    "adapter": frozenset({"save_dtype", "init_random_b", "targets"}),
    # Samples while training (engine/trainer/sampling.py); profiles/rules/sample.py checks the values.
    "sample": frozenset(
        {
            "prompts",
            "negative_prompt",
            "width",
            "height",
            "steps",
            "guidance",
            "seed",
            "every_n_steps",
            "every_n_epochs",
            "before_first_step",
        }
    ),
}
