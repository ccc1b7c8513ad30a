"""Model types the adapter refuses, grouped by why (``neuronscope models`` prints them with the reason).

Every causal-LM and image-text-to-text model type of the installed transformers is either adapted by a spec (and
checked on a tiny config), a vision-language wrapper with a layout reader, a wrapper accepted for text-only
scoring (``TEXT_ONLY``), or refused here; ``tests/models/test_catalogue.py`` fails when a new release adds one
that is none of these.
"""

from neuronscope.models.spec import Refusal

MOE_REASON = ("a mixture-of-experts family whose router and experts neuronscope has not mapped yet (the covered MoE "
              "families are in src/neuronscope/models/moe/families.py), so it refuses rather than scoring only part "
              "of each layer")

REFUSALS: tuple[Refusal, ...] = (
    Refusal((
        "afmoe", "aria", "aria_text", "axk1", "axk2", "cohere2_moe", "dbrx", "deepseek_v32", "deepseek_v4", "dots1",
        "dots3_note", "dots3_note_text", "ernie4_5_moe", "ernie4_5_vl_moe", "exaone_moe", "flex_olmo",
        "glm4_moe_lite", "glm4v_moe", "glm_moe_dsa", "granitemoe_swa", "granitemoehybrid", "granitemoeshared",
        "hunyuan_v1_moe", "hy_v3", "hy_v4", "hy_v4_vl", "inkling2", "inkling2_loop", "inkling2_loop_text",
        "inkling2_text", "inkling_mm_model", "inkling_text", "jetmoe", "kimi_k25", "kolibri1", "laguna",
        "lara_mini", "lfm2_moe", "longcat_flash", "mellum", "mimo_v2_flash", "minimax", "minimax_m2",
        "minimax_m3_vl", "minimax_m3_vl_text", "mistral4", "mistral_large4", "qwen3_omni_moe_thinker", "qwen4_exp",
        "qwen4_exp_text", "sarvam_mla", "sarvam_moe", "solar_open", "step3p7", "zaya", "muse_spark", "muse_glimmer",
        "glm5_next",
    ), "moe", MOE_REASON),
    Refusal(("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm"), "state-space",
            "no FFN layers: the whole model is a recurrent / state-space mixer, so there are no FFN neurons to score"),
    Refusal(("zamba", "zamba2", "recurrent_gemma", "bamba"), "hybrid",
            "a hybrid whose layers neuronscope has not mapped yet (Zamba's shared transformer blocks are reused "
            "across positions of the stack; RecurrentGemma's temporal / channel blocks; Bamba's Mamba-2 layers are "
            "unverified); no spec, so nothing is scored rather than scored wrongly"),
    Refusal(("kimi_linear", "bailing_hybrid", "olmo_hybrid"), "hybrid",
            "linear-attention layers are named like softmax attention (self_attn) or change their norm roles per "
            "layer type (OLMo-Hybrid's post_attention_layernorm is a post-norm in attention layers and a pre-norm in "
            "linear ones); a per-layer spec is needed before its residual can be accounted for"),
    Refusal(("gemma3n", "gemma3n_text"), "multi-stream",
            "Gemma-3n keeps several residual streams (AltUp) and adds a per-layer input and Laurel branch: a neuron's "
            "write does not land on one residual stream"),
    Refusal(("doge", "beam"), "rescaled-residual",
            "the residual stream itself is rescaled at every add (Doge's learned input_residual / "
            "post_attention_residual; Beam's depth-scaled residual add), so a write's share is not preserved "
            "downstream in the way the frozen readout assumes; no spec"),
    Refusal(("dory",), "norm", "L2-normalised residual norms (DoryL2Norm) and per-token logit scales; no spec"),
    Refusal(("gemma4_assistant", "gemma4_unified_assistant"), "draft-model",
            "a speculative-decoding drafter that reads another model's hidden states, not a standalone decoder"),
    Refusal(("opt", "biogpt", "xglm"), "layout",
            "the FFN projections fc1 / fc2 sit directly in the decoder layer (no FFN module), and OPT can place its "
            "norms after the residual add (do_layer_norm_before=False); no spec yet"),
    Refusal(("openai-gpt", "ctrl", "gpt_neo", "gpt_neox_japanese", "cohere_compass_text", "blt", "hrm_text",
             "moshi", "phi4_multimodal", "cpmant", "reformer", "xlnet"), "layout",
            "a decoder layout without a spec: post-norm residual (OpenAI GPT), Sequential FFN (CTRL), local/global "
            "attention blocks (GPT-Neo), a bias added outside the FFN (GPT-NeoX-Japanese), byte patches (BLT), "
            "hierarchical recurrence (HRM), audio depth decoder (Moshi), LoRA-adapted layers (Phi-4-multimodal), "
            "reversible / permutation layers (Reformer, XLNet)"),
    Refusal(("bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie",
             "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm",
             "xlm-roberta", "xlm-roberta-xl", "xmod", "modernbert-decoder"), "encoder-only",
            "a BERT-style encoder used as a decoder: post-LN layers normalise the residual after each add, so no "
            "write lands on a residual stream that reaches the logits unchanged; use a decoder-only model"),
    Refusal(("bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus",
             "plbart", "prophetnet", "trocr", "whisper", "musicgen", "musicgen_melody", "moss_transcribe_diarize",
             "t5gemma2", "vision-encoder-decoder", "florence2", "pix2struct", "udop", "kosmos-2.5", "pp_chart2table",
             "pp_formulanet", "evolla"), "encoder-decoder",
            "an encoder-decoder: the decoder's layers add cross-attention to an encoder's output, which this adapter "
            "does not account for; use a decoder-only model"),
    Refusal(("mllama",), "cross-attention",
            "Llama-3.2-Vision reads the image through cross-attention layers interleaved with the self-attention "
            "ones, not through image tokens in the residual stream; no spec for its cross-attention layers yet"),
    Refusal(("git", "idefics", "blip", "fuyu", "kosmos-2"), "vision-layout",
            "its image enters through a path the adapter does not follow (GIT's image tokens run through the text "
            "stack as a prefix encoder; IDEFICS-1's gated cross-attention layers; BLIP's text decoder "
            "cross-attends; Fuyu's and KOSMOS-2's decoders have no spec)"),
)
