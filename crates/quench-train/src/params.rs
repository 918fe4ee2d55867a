//! Reads a module's float parameters with their module paths (for histograms and reports).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// One float parameter: module path (`Mlp.layers.0.weight`), shape and values.
#[derive(Debug, Clone)]
pub struct ParamValues {
    /// Dotted module path.
    pub path: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

struct Collector {
    path: Vec<String>,
    out: Vec<ParamValues>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let dims = t.dims().to_vec();
        // A parameter that cannot be read as f32 is skipped rather than aborting a report.
        if let Ok(values) = t.into_data().convert::<f32>().try_to_vec::<f32>() {
            self.out.push(ParamValues {
                path: self.path.join("."),
                dims,
                values,
            });
        }
    }
}

/// All float parameters of `module`, in visiting order.
pub fn float_params<M: Module>(module: &M) -> Vec<ParamValues> {
    let mut c = Collector {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Replaces float parameters by path with `values` (same shapes), keeping each parameter's id
/// and autodiff settings; returns the module and how many parameters were set.
pub fn set_float_params<M: Module>(
    module: M,
    values: &std::collections::BTreeMap<String, ParamValues>,
) -> (M, usize) {
    let mut setter = Setter {
        path: Vec::new(),
        values,
        set: 0,
    };
    let module = module.map(&mut setter);
    (module, setter.set)
}

struct Setter<'a> {
    path: Vec<String>,
    values: &'a std::collections::BTreeMap<String, ParamValues>,
    set: usize,
}

impl burn::module::ModuleMapper for Setter<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(v) = self.values.get(&self.path.join(".")) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        if tensor.dims().as_slice() != v.dims.as_slice() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let autodiff = tensor.is_autodiff();
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        let mut out: Tensor<D> = Tensor::from_data(
            burn::tensor::TensorData::new(v.values.clone(), v.dims.clone()),
            &device,
        );
        if autodiff && require_grad {
            out = out.require_grad();
        }
        self.set += 1;
        Param::from_mapped_value(id, out, mapper)
    }
}
