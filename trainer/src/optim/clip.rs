//! Global-norm clipping as `torch.nn.utils.clip_grad_norm_`: the L2 norm over all gradients
//! together; when it exceeds `max_norm`, every gradient is scaled by `max_norm / (norm + 1e-6)`.

use candle_core::{DType, Result, Tensor};

/// The total norm before clipping, and the gradients after it (`max_norm` None: unclipped).
pub fn clip_grad_norm(grads: Vec<Tensor>, max_norm: Option<f64>) -> Result<(f64, Vec<Tensor>)> {
    let mut sum_sq = 0f64;
    for g in &grads {
        sum_sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sum_sq.sqrt();
    let Some(max_norm) = max_norm else {
        return Ok((norm, grads));
    };
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return Ok((norm, grads));
    }
    let clipped = grads
        .into_iter()
        .map(|g| g * coef)
        .collect::<Result<Vec<_>>>()?;
    Ok((norm, clipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clips_to_the_global_norm_like_torch() {
        let d = Device::Cpu;
        let g = vec![
            Tensor::new(&[3f32, 0.0], &d).unwrap(),
            Tensor::new(&[4f32], &d).unwrap(),
        ];
        let (norm, out) = clip_grad_norm(g.clone(), Some(1.0)).unwrap();
        assert_eq!(norm, 5.0);
        // torch: coef = 1 / (5 + 1e-6)
        let coef = 1.0 / (5.0 + 1e-6);
        let a: Vec<f32> = out[0].to_vec1().unwrap();
        assert!((a[0] as f64 - 3.0 * coef).abs() < 1e-7);
        let (_, same) = clip_grad_norm(g.clone(), Some(10.0)).unwrap();
        assert_eq!(same[1].to_vec1::<f32>().unwrap(), vec![4.0]);
        let (n, _) = clip_grad_norm(g, None).unwrap();
        assert_eq!(n, 5.0);
    }
}
