//! Parameter counts by part, for `vlmtune inspect` and training logs.

use burn::tensor::backend::Backend;

use crate::vlm::SmolVlm;

/// Parameter counts of a model, split the way users think about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    /// `model.vision_model.*`.
    pub vision: usize,
    /// `model.connector.*`.
    pub connector: usize,
    /// `model.text_model.*`.
    pub text: usize,
    /// `lm_head.*`.
    pub lm_head: usize,
    /// Adapter parameters (LoRA, DoRA).
    pub adapters: usize,
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// Of the part counts, weights stored quantised (4-bit / int8), counted by element.
    pub quantized: usize,
}

impl ParamCounts {
    /// All parameters.
    pub fn total(&self) -> usize {
        self.vision + self.connector + self.text + self.lm_head + self.adapters
    }
}

impl ParamCounts {
    fn add_to_part(&mut self, path: &str, n: usize) {
        if path.starts_with("model.vision_model.") {
            self.vision += n;
        } else if path.starts_with("model.connector.") {
            self.connector += n;
        } else if path.starts_with("model.text_model.") {
            self.text += n;
        } else {
            self.lm_head += n;
        }
    }
}

/// Counts the parameters of `model` by part: float parameters, and quantised weights by
/// element (as PEFT counts a `Params4bit` as its unpacked size), so that the total does not
/// depend on the storage.
pub fn param_counts<B: Backend>(model: &SmolVlm<B>) -> ParamCounts {
    use vlmtune_peft::adapters::LinearModules;
    let mut counts = ParamCounts::default();
    for p in vlmtune_peft::named_params::<B, _>(model) {
        let n = p.numel();
        if p.trainable {
            counts.trainable += n;
        }
        if !crate::checkpoint::is_base_param(&p.path) {
            counts.adapters += n;
        } else {
            counts.add_to_part(&p.path, n);
        }
    }
    model.visit_linears(&mut |path, linear| {
        if linear.is_quantized() {
            let n = linear.in_features() * linear.out_features();
            counts.quantized += n;
            counts.add_to_part(path, n);
        }
    });
    counts
}

/// A human-readable architecture summary with parameter counts.
pub fn describe<B: Backend>(model: &SmolVlm<B>) -> String {
    let c = model.config();
    let v = &c.vision_config;
    let t = &c.text_config;
    let n = param_counts(model);
    let m = |x: usize| format!("{:>12} ({:.2}M)", x, x as f64 / 1e6);
    format!(
        "model_type: {}\n\
         vision: SigLIP {} layers, hidden {}, {} heads, mlp {}, patch {}, tile {} ({} patches)\n\
         connector: pixel shuffle x{} -> {} tokens per tile, {} -> {}\n\
         text: Llama {} layers, hidden {}, {} heads / {} kv heads, head_dim {}, mlp {}, vocab {}, rope_theta {}\n\
         image_token_id: {}, tied embeddings: {}\n\
         parameters:\n  vision     {}\n  connector  {}\n  text       {}\n  lm_head    {}\n  adapters   {}\n  total      {}\n  trainable  {}\n{}",
        c.model_type,
        v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.intermediate_size, v.patch_size, v.image_size, v.num_patches(),
        c.scale_factor, c.image_seq_len(), v.hidden_size * c.scale_factor * c.scale_factor, t.hidden_size,
        t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.kv_heads(), t.head_dim(), t.intermediate_size, t.vocab_size, t.rope_theta(),
        c.image_token_id, c.tied_embeddings(),
        m(n.vision), m(n.connector), m(n.text), m(n.lm_head), m(n.adapters), m(n.total()), m(n.trainable),
        if n.quantized > 0 { format!("  quantised  {} (of the above: 4-bit / int8 storage)\n", m(n.quantized)) } else { String::new() },
    )
}
