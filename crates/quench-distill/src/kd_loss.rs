//! Hinton knowledge-distillation loss: `α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)`.
//!
//! The `T²` factor keeps the soft gradient's scale independent of `T`: without it the gradient
//! `(softmax(s/T) − softmax(t/T))/(T·B)` shrinks like `1/T²` for large `T` (Hinton, Vinyals, Dean
//! 2015, §2), so α would silently change meaning whenever the temperature is tuned.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::error::DistillError;

/// Hinton KD loss settings; build with [`KdLoss::new`] (or `DistillSpec::kd_loss`) to validate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdLoss {
    /// Softmax temperature `T > 0` applied to both teacher and student logits.
    pub temperature: f64,
    /// Weight of the soft loss in `[0, 1]`; the hard cross entropy gets `1 − alpha`.
    pub alpha: f64,
}

/// The three losses of one batch, each of shape `[1]`; log `soft` and `hard`, backprop `total`.
#[derive(Debug, Clone)]
pub struct KdOutput {
    /// `alpha·soft + (1 − alpha)·hard`: the loss to minimise.
    pub total: Tensor<1>,
    /// `T²·mean_b KL(softmax(t/T) ‖ softmax(s/T))`.
    pub soft: Tensor<1>,
    /// Cross entropy of the student logits (at temperature 1) with the hard labels.
    pub hard: Tensor<1>,
}

impl KdLoss {
    /// A validated loss: `temperature` finite and > 0, `alpha` in `[0, 1]`.
    pub fn new(temperature: f64, alpha: f64) -> Result<Self, DistillError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(DistillError::Temperature { value: temperature });
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(DistillError::Alpha { value: alpha });
        }
        Ok(Self { temperature, alpha })
    }

    /// Computes the soft, hard and total losses of a batch.
    ///
    /// `student_logits` and `teacher_logits` are `[B, C]`, `targets` is `[B]` class indices.
    /// The teacher logits are taken off the autodiff graph: no gradient ever reaches the teacher,
    /// whether it ran live (inner backend or autodiff) or came from a [`crate::LogitCache`].
    ///
    /// # Panics
    /// If the shapes disagree or the batch is empty (programming errors: check class counts
    /// once up front with [`check_classes`]), or if the fields were set to invalid values.
    pub fn forward(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> KdOutput {
        let [batch, classes] = student_logits.dims();
        assert_eq!(
            teacher_logits.dims(),
            [batch, classes],
            "KdLoss: teacher logits shape differs from student logits shape"
        );
        assert_eq!(
            targets.dims(),
            [batch],
            "KdLoss: targets length differs from the batch size"
        );
        assert!(batch > 0, "KdLoss: empty batch");
        assert!(
            Self::new(self.temperature, self.alpha).is_ok(),
            "KdLoss: invalid settings {self:?}"
        );

        let soft = self.soft(student_logits.clone(), teacher_logits);
        let hard = hard_cross_entropy(student_logits, targets);
        // Skip the zero-weighted term so a NaN in it cannot leak through `0·NaN`.
        let total = if self.alpha >= 1.0 {
            soft.clone()
        } else if self.alpha <= 0.0 {
            hard.clone()
        } else {
            soft.clone().mul_scalar(self.alpha) + hard.clone().mul_scalar(1.0 - self.alpha)
        };
        KdOutput { total, soft, hard }
    }

    /// The soft term alone: `T²·mean_b Σ_c p_t (log p_t − log_softmax(s/T))`, shape `[1]`.
    pub fn soft(&self, student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> Tensor<1> {
        let [batch, _] = student_logits.dims();
        let t = self.temperature;
        // `without_autodiff` makes the teacher a constant for every op it meets, even when the
        // caller passed an autodiff tensor that requires grad (which `detach` would keep).
        let log_p_teacher = log_softmax(teacher_logits.without_autodiff().div_scalar(t), 1);
        let p_teacher = log_p_teacher.clone().exp();
        // Teacher entropy part is a constant; only the cross term carries student gradient.
        // burn's log_softmax shifts by the (detached) row max, so large logits stay finite.
        let log_q_student = log_softmax(student_logits.div_scalar(t), 1);
        let kl_sum = (p_teacher * (log_p_teacher - log_q_student)).sum();
        kl_sum.mul_scalar(t * t / batch as f64)
    }
}

/// Mean cross entropy of `logits` `[B, C]` with class indices `targets` `[B]`.
fn hard_cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let picked = log_softmax(logits, 1).gather(1, targets.reshape([batch, 1]));
    picked.sum().mul_scalar(-1.0 / batch as f64)
}

/// Checks that teacher and student predict over the same classes (call once before training).
pub fn check_classes(student_classes: usize, teacher_classes: usize) -> Result<(), DistillError> {
    if student_classes == teacher_classes {
        Ok(())
    } else {
        Err(DistillError::ClassMismatch {
            teacher: teacher_classes,
            student: student_classes,
        })
    }
}

/// Fraction of rows whose top-1 class is the same for student and teacher (0 for an empty batch).
pub fn agreement(student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> f32 {
    let [batch, classes] = student_logits.dims();
    assert_eq!(
        teacher_logits.dims(),
        [batch, classes],
        "agreement: teacher logits shape differs from student logits shape"
    );
    if batch == 0 {
        return 0.0;
    }
    let s = student_logits.without_autodiff().argmax(1);
    let t = teacher_logits.without_autodiff().argmax(1);
    s.equal(t).float().mean().into_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::{CrossEntropyLossConfig, KLDivLossConfig, Reduction};
    use burn::tensor::activation::softmax;
    use burn::tensor::{Device, TensorData};

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn scalar(t: Tensor<1>) -> f32 {
        let v = vals(t);
        assert_eq!(v.len(), 1);
        v[0]
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?} want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "index {i}: got {g} want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    fn t2(v: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
    }

    fn labels(v: &[i64], device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    const S: [f32; 6] = [1.0, 2.0, 0.5, 0.0, -1.0, 3.0];
    const T: [f32; 6] = [2.0, 1.0, 0.0, 0.5, 0.5, 2.5];
    const Y: [i64; 2] = [1, 2];

    #[test]
    fn new_validates() {
        assert!(KdLoss::new(4.0, 0.9).is_ok());
        assert!(matches!(
            KdLoss::new(0.0, 0.5),
            Err(DistillError::Temperature { .. })
        ));
        assert!(matches!(
            KdLoss::new(f64::NAN, 0.5),
            Err(DistillError::Temperature { .. })
        ));
        assert!(matches!(
            KdLoss::new(1.0, -0.1),
            Err(DistillError::Alpha { .. })
        ));
        assert!(matches!(
            KdLoss::new(1.0, f64::NAN),
            Err(DistillError::Alpha { .. })
        ));
    }

    #[test]
    fn matches_hand_computed_2x3_example() {
        // Reference values from a float64 Python computation of the formula in the module doc:
        // s = [[1, 2, .5], [0, -1, 3]], t = [[2, 1, 0], [.5, .5, 2.5]], y = [1, 2], T = 2, α = .7
        let d = Device::flex();
        let loss = KdLoss::new(2.0, 0.7).unwrap();
        let out = loss.forward(t2(&S, [2, 3], &d), t2(&T, [2, 3], &d), labels(&Y, &d));
        assert_close(&[scalar(out.soft)], &[0.354_905_1], 1e-5);
        assert_close(&[scalar(out.hard)], &[0.265_126_34], 1e-5);
        assert_close(&[scalar(out.total)], &[0.327_971_5], 1e-5);
    }

    #[test]
    fn t1_alpha1_is_plain_kl() {
        let d = Device::flex();
        let (s, t) = (t2(&S, [2, 3], &d), t2(&T, [2, 3], &d));
        let out = KdLoss::new(1.0, 1.0)
            .unwrap()
            .forward(s.clone(), t.clone(), labels(&Y, &d));
        let kl = KLDivLossConfig::new().init().forward(
            log_softmax(s, 1),
            softmax(t, 1),
            Reduction::BatchMean,
        );
        let got = scalar(out.total.clone());
        assert_close(&[got], &[scalar(kl)], 1e-5);
        assert_close(&[got], &[0.289_060_05], 1e-5); // Python float64 reference
        assert_eq!(got, scalar(out.soft));
    }

    #[test]
    fn alpha0_is_burn_cross_entropy() {
        let d = Device::flex();
        let (s, t) = (t2(&S, [2, 3], &d), t2(&T, [2, 3], &d));
        let out = KdLoss::new(3.0, 0.0)
            .unwrap()
            .forward(s.clone(), t, labels(&Y, &d));
        let ce = CrossEntropyLossConfig::new()
            .init(&d)
            .forward(s, labels(&Y, &d));
        let ce = scalar(ce);
        assert_close(&[scalar(out.total)], &[ce], 1e-6);
        assert_close(&[scalar(out.hard)], &[ce], 1e-6);
    }

    #[test]
    fn identical_logits_have_zero_soft_loss() {
        let d = Device::flex();
        let out = KdLoss::new(4.0, 0.9).unwrap().forward(
            t2(&S, [2, 3], &d),
            t2(&S, [2, 3], &d),
            labels(&Y, &d),
        );
        assert!(scalar(out.soft).abs() < 1e-6);
    }

    fn softmax_rows(v: &[f32], c: usize, t: f64) -> Vec<f64> {
        v.chunks(c)
            .flat_map(|row| {
                let m = row.iter().fold(f64::MIN, |a, &x| a.max(x as f64 / t));
                let e: Vec<f64> = row.iter().map(|&x| (x as f64 / t - m).exp()).collect();
                let z: f64 = e.iter().sum();
                e.into_iter().map(move |x| x / z)
            })
            .collect()
    }

    #[test]
    fn soft_gradient_is_t_times_prob_difference_over_b() {
        let d = Device::flex().autodiff();
        for temp in [1.0, 2.0, 5.0] {
            let s = t2(&S, [2, 3], &d).require_grad();
            let out = KdLoss::new(temp, 1.0).unwrap().forward(
                s.clone(),
                t2(&T, [2, 3], &d),
                labels(&Y, &d),
            );
            let g = vals(s.grad(&out.total.backward()).unwrap());
            let (q, p) = (softmax_rows(&S, 3, temp), softmax_rows(&T, 3, temp));
            let want: Vec<f32> = q
                .iter()
                .zip(&p)
                .map(|(q, p)| (temp * (q - p) / 2.0) as f32)
                .collect();
            assert_close(&g, &want, 1e-5);
        }
    }

    #[test]
    fn total_gradient_matches_central_differences() {
        let loss = KdLoss::new(3.0, 0.6).unwrap();
        let ad = Device::flex().autodiff();
        let s = t2(&S, [2, 3], &ad).require_grad();
        let out = loss.forward(s.clone(), t2(&T, [2, 3], &ad), labels(&Y, &ad));
        let g = vals(s.grad(&out.total.backward()).unwrap());

        let d = Device::flex();
        let f = |v: &[f32]| {
            let out = loss.forward(t2(v, [2, 3], &d), t2(&T, [2, 3], &d), labels(&Y, &d));
            scalar(out.total) as f64
        };
        let eps = 1e-2_f32;
        let fd: Vec<f32> = (0..S.len())
            .map(|i| {
                let (mut up, mut down) = (S, S);
                up[i] += eps;
                down[i] -= eps;
                ((f(&up) - f(&down)) / (2.0 * eps as f64)) as f32
            })
            .collect();
        assert_close(&g, &fd, 2e-3);
    }

    #[test]
    fn teacher_gets_no_gradient() {
        let d = Device::flex().autodiff();
        let s = t2(&S, [2, 3], &d).require_grad();
        // A teacher leaf that requires grad, and a teacher output computed from a weight.
        let t_leaf = t2(&T, [2, 3], &d).require_grad();
        let w = t2(&[1.5; 6], [2, 3], &d).require_grad();
        let t_out = t_leaf.clone() * w.clone();
        let out = KdLoss::new(2.0, 0.5)
            .unwrap()
            .forward(s.clone(), t_out, labels(&Y, &d));
        let grads = out.total.backward();
        assert!(s.grad(&grads).is_some());
        assert!(
            t_leaf.grad(&grads).is_none(),
            "teacher logits got a gradient"
        );
        assert!(w.grad(&grads).is_none(), "teacher weight got a gradient");
    }

    #[test]
    fn inner_backend_teacher_works_with_autodiff_student() {
        // The usual setup: teacher runs on the inner backend, student on autodiff.
        let ad = Device::flex().autodiff();
        let s = t2(&S, [2, 3], &ad).require_grad();
        let t = t2(&T, [2, 3], &ad).without_autodiff();
        let out = KdLoss::new(2.0, 0.7)
            .unwrap()
            .forward(s.clone(), t, labels(&Y, &ad));
        assert_close(&[scalar(out.total.clone())], &[0.327_971_5], 1e-5);
        let g = vals(s.grad(&out.total.backward()).unwrap());
        assert!(g.iter().all(|x| x.is_finite() && *x != 0.0), "{g:?}");
    }

    #[test]
    fn huge_logits_stay_finite() {
        let d = Device::flex().autodiff();
        let big: Vec<f32> = S.iter().map(|x| x * 1e4).collect();
        let tbig: Vec<f32> = T.iter().map(|x| -x * 1e4).collect();
        let s = t2(&big, [2, 3], &d).require_grad();
        let out = KdLoss::new(1.0, 0.5).unwrap().forward(
            s.clone(),
            t2(&tbig, [2, 3], &d),
            labels(&Y, &d),
        );
        let total = scalar(out.total.clone());
        assert!(total.is_finite() && total > 0.0, "{total}");
        let g = vals(s.grad(&out.total.backward()).unwrap());
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    }

    #[test]
    #[should_panic(expected = "teacher logits shape")]
    fn shape_mismatch_panics() {
        let d = Device::flex();
        KdLoss::new(1.0, 0.5).unwrap().forward(
            t2(&S, [2, 3], &d),
            t2(&S, [3, 2], &d),
            labels(&Y, &d),
        );
    }

    #[test]
    fn check_classes_reports_both_counts() {
        check_classes(10, 10).unwrap();
        let e = check_classes(10, 100).unwrap_err();
        assert!(matches!(
            e,
            DistillError::ClassMismatch {
                teacher: 100,
                student: 10
            }
        ));
    }

    #[test]
    fn agreement_is_top1_match_rate() {
        let d = Device::flex().autodiff();
        // argmax rows: student [1, 2, 0, 0], teacher [1, 0, 0, 2] → 2 of 4 agree.
        let s = t2(
            &[0., 1., 0., 0., 0., 5., 9., 1., 1., 3., 2., 1.],
            [4, 3],
            &d,
        );
        let t = t2(
            &[0., 2., 1., 7., 0., 5., 4., 1., 1., 0., 2., 3.],
            [4, 3],
            &d,
        );
        assert_eq!(agreement(s.clone(), t.clone()), 0.5);
        assert_eq!(agreement(s.clone(), s), 1.0);
        let empty = Tensor::<2>::zeros([0, 3], &d);
        assert_eq!(agreement(empty.clone(), empty), 0.0);
    }
}
