//! The model's Linear layers by module path, for adapters ([`LinearModules`]), plus the
//! freeze switches of full fine-tuning.

use burn::tensor::backend::Backend;
use vlmtune_peft::{set_requires_grad, Linear, LinearModules};

use crate::vlm::SmolVlm;

/// Which parts of the model train in full (no adapters needed for these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trainable {
    /// `model.vision_model.*`.
    pub vision: bool,
    /// `model.connector.*`.
    pub connector: bool,
    /// `model.text_model.*`.
    pub text: bool,
    /// `lm_head.*`.
    pub lm_head: bool,
}

impl Trainable {
    /// Everything (full fine-tuning).
    pub fn all() -> Self {
        Self {
            vision: true,
            connector: true,
            text: true,
            lm_head: true,
        }
    }

    /// Whether the base parameter at `path` trains.
    pub fn covers(&self, path: &str) -> bool {
        (self.vision && path.starts_with("model.vision_model."))
            || (self.connector && path.starts_with("model.connector."))
            || (self.text && path.starts_with("model.text_model."))
            || (self.lm_head && path.starts_with("lm_head."))
    }
}

impl<B: Backend> SmolVlm<B> {
    /// Sets which base parameters train; adapter parameters keep training.
    pub fn with_trainable(self, parts: Trainable) -> Self {
        set_requires_grad(self, |path| {
            crate::checkpoint::is_base_param(path).then(|| parts.covers(path))
        })
    }
}

/// Walks every Linear of the model body; `$iter` is `iter` or `iter_mut` to match `$mutability`.
macro_rules! visit_all {
    ($model:expr, $f:expr, $iter:ident, $($mutability:tt)*) => {{
        let m = & $($mutability)* $model.model;
        for (i, layer) in m.vision_model.encoder.layers.$iter().enumerate() {
            let p = format!("model.vision_model.encoder.layers.{i}");
            let a = & $($mutability)* layer.self_attn;
            $f(&format!("{p}.self_attn.q_proj"), & $($mutability)* a.q_proj);
            $f(&format!("{p}.self_attn.k_proj"), & $($mutability)* a.k_proj);
            $f(&format!("{p}.self_attn.v_proj"), & $($mutability)* a.v_proj);
            $f(&format!("{p}.self_attn.out_proj"), & $($mutability)* a.out_proj);
            $f(&format!("{p}.mlp.fc1"), & $($mutability)* layer.mlp.fc1);
            $f(&format!("{p}.mlp.fc2"), & $($mutability)* layer.mlp.fc2);
        }
        $f("model.connector.modality_projection.proj", & $($mutability)* m.connector.modality_projection.proj);
        for (i, layer) in m.text_model.layers.$iter().enumerate() {
            let p = format!("model.text_model.layers.{i}");
            let a = & $($mutability)* layer.self_attn;
            $f(&format!("{p}.self_attn.q_proj"), & $($mutability)* a.q_proj);
            $f(&format!("{p}.self_attn.k_proj"), & $($mutability)* a.k_proj);
            $f(&format!("{p}.self_attn.v_proj"), & $($mutability)* a.v_proj);
            $f(&format!("{p}.self_attn.o_proj"), & $($mutability)* a.o_proj);
            $f(&format!("{p}.mlp.gate_proj"), & $($mutability)* layer.mlp.gate_proj);
            $f(&format!("{p}.mlp.up_proj"), & $($mutability)* layer.mlp.up_proj);
            $f(&format!("{p}.mlp.down_proj"), & $($mutability)* layer.mlp.down_proj);
        }
    }};
}

impl<B: Backend> LinearModules<B> for SmolVlm<B> {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &Linear<B>)) {
        visit_all!(self, f, iter,);
        if let Some(head) = &self.lm_head {
            f("lm_head", head);
        }
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear<B>)) {
        visit_all!(self, f, iter_mut, mut);
        if let Some(head) = &mut self.lm_head {
            f("lm_head", head);
        }
    }
}
