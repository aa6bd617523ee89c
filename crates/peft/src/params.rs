//! Walking a module's float parameters by their module path (= Hugging Face key).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use vlmtune_quant::NamedTensor;

/// A float parameter found in a module tree.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedParam {
    /// Dotted module path, e.g. `model.text_model.layers.0.self_attn.q_proj.weight`.
    pub path: String,
    /// The parameter's id (stable while the module lives).
    pub id: ParamId,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether it receives gradients.
    pub trainable: bool,
}

impl NamedParam {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Keeps the dotted path of the module being visited.
#[derive(Default)]
pub struct PathTracker {
    parts: Vec<String>,
}

impl PathTracker {
    /// Enters a field or index.
    pub fn enter(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }
    /// Leaves it.
    pub fn exit(&mut self) {
        self.parts.pop();
    }
    /// The current path.
    pub fn path(&self) -> String {
        self.parts.join(".")
    }
}

struct Collector<F> {
    path: PathTracker,
    on_param: F,
}

impl<B: Backend, F: FnMut(String, ParamId, Vec<usize>, bool, &dyn Fn() -> Vec<f32>)>
    ModuleVisitor<B> for Collector<F>
{
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let read = || {
            tensor
                .to_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default()
        };
        (self.on_param)(
            self.path.path(),
            param.id,
            shape,
            param.is_require_grad(),
            &read,
        );
    }
}

fn visit_params<B: Backend, M: Module<B>>(
    module: &M,
    on_param: impl FnMut(String, ParamId, Vec<usize>, bool, &dyn Fn() -> Vec<f32>),
) {
    let mut collector = Collector {
        path: PathTracker::default(),
        on_param,
    };
    module.visit(&mut collector);
}

/// Every float parameter of `module`, in visiting order.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam> {
    let mut out = Vec::new();
    visit_params::<B, M>(module, |path, id, shape, trainable, _| {
        out.push(NamedParam {
            path,
            id,
            shape,
            trainable,
        })
    });
    out
}

/// The values of the float parameters whose path passes `keep`, read back to the host.
pub fn param_values<B: Backend, M: Module<B>>(
    module: &M,
    mut keep: impl FnMut(&str) -> bool,
) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    visit_params::<B, M>(module, |path, _, shape, _, read| {
        if keep(&path) {
            out.push(NamedTensor {
                name: path,
                values: read(),
                shape,
            });
        }
    });
    out
}

struct RequiresGradSetter<F> {
    path: PathTracker,
    decide: F,
}

impl<B: Backend, F: FnMut(&str) -> Option<bool>> burn::module::ModuleMapper<B>
    for RequiresGradSetter<F>
{
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match (self.decide)(&self.path.path()) {
            Some(flag) => param.set_require_grad(flag),
            None => param,
        }
    }
}

/// Sets `require_grad` of every float parameter for which `decide(path)` says `Some(flag)`,
/// leaving the others as they are. This is how full fine-tuning and the freeze switches
/// (vision tower, connector, text model) are expressed.
pub fn set_requires_grad<B: Backend, M: Module<B>>(
    module: M,
    decide: impl FnMut(&str) -> Option<bool>,
) -> M {
    let mut mapper = RequiresGradSetter {
        path: PathTracker::default(),
        decide,
    };
    module.map(&mut mapper)
}
