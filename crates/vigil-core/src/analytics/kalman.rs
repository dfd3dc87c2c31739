//! The tracker's motion model: a constant-velocity Kalman filter on a box's centre, aspect ratio
//! and height (ByteTrack's noise model), in f64. Pure arithmetic, no allocation.

use super::BBox;

/// `(cx, cy, w / h, h)` of a box with positive height.
pub(super) fn xyah(b: &BBox) -> [f64; 4] {
    let (w, h) = (b.width() as f64, b.height() as f64);
    [
        (b.x1 as f64 + b.x2 as f64) * 0.5,
        (b.y1 as f64 + b.y2 as f64) * 0.5,
        w / h,
        h,
    ]
}

/// Noise scales of ByteTrack's filter, relative to the box height.
const STD_POS: f64 = 1.0 / 20.0;
const STD_VEL: f64 = 1.0 / 160.0;

/// Constant-velocity Kalman filter on `(cx, cy, a, h, vcx, vcy, va, vh)`, measuring
/// `(cx, cy, a, h)`; noise model as in ByteTrack's `KalmanFilter`. f64 because the variances
/// span ten orders of magnitude in normalised coordinates.
#[derive(Debug, Clone)]
pub(super) struct Kalman {
    pub(super) x: [f64; 8],
    p: [[f64; 8]; 8],
}

// Index loops read like the matrix algebra they implement.
#[allow(clippy::needless_range_loop)]
impl Kalman {
    pub(super) fn new(z: [f64; 4]) -> Self {
        let h = z[3];
        let std = [
            2.0 * STD_POS * h,
            2.0 * STD_POS * h,
            1e-2,
            2.0 * STD_POS * h,
            10.0 * STD_VEL * h,
            10.0 * STD_VEL * h,
            1e-5,
            10.0 * STD_VEL * h,
        ];
        let mut p = [[0.0; 8]; 8];
        for i in 0..8 {
            p[i][i] = std[i] * std[i];
        }
        Self {
            x: [z[0], z[1], z[2], z[3], 0.0, 0.0, 0.0, 0.0],
            p,
        }
    }

    /// `x = F x`, `P = F P Fᵀ + Q`, with `F = I + E` and `E[i][i + 4] = 1` (one frame).
    pub(super) fn predict(&mut self) {
        let h = self.x[3].abs();
        let (sp, sv) = (STD_POS * h, STD_VEL * h);
        let q = [sp, sp, 1e-2, sp, sv, sv, 1e-5, sv];
        for i in 0..4 {
            self.x[i] += self.x[i + 4];
        }
        let p = &self.p;
        let mut n = [[0.0; 8]; 8];
        for i in 0..8 {
            for j in 0..8 {
                let mut v = p[i][j];
                if i < 4 {
                    v += p[i + 4][j];
                }
                if j < 4 {
                    v += p[i][j + 4];
                }
                if i < 4 && j < 4 {
                    v += p[i + 4][j + 4];
                }
                n[i][j] = v;
            }
            n[i][i] += q[i] * q[i];
        }
        self.p = n;
    }

    /// Measurement update with `H = [I₄ 0]`.
    pub(super) fn update(&mut self, z: [f64; 4]) {
        let h = self.x[3].abs();
        let r = [STD_POS * h, STD_POS * h, 1e-1, STD_POS * h];
        let mut s = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                s[i][j] = self.p[i][j];
            }
            s[i][i] += r[i] * r[i];
        }
        let Some(si) = inv4(s) else {
            // Degenerate covariance: restart the filter on the measurement.
            *self = Kalman::new(z);
            return;
        };
        // K = P Hᵀ S⁻¹ (8×4).
        let mut k = [[0.0; 4]; 8];
        for (i, row) in k.iter_mut().enumerate() {
            for (j, kij) in row.iter_mut().enumerate() {
                *kij = (0..4).map(|m| self.p[i][m] * si[m][j]).sum();
            }
        }
        let y = [
            z[0] - self.x[0],
            z[1] - self.x[1],
            z[2] - self.x[2],
            z[3] - self.x[3],
        ];
        for (i, row) in k.iter().enumerate() {
            self.x[i] += (0..4).map(|m| row[m] * y[m]).sum::<f64>();
        }
        // P = P - K H P, H P being the first four rows of P.
        let mut n = self.p;
        for (i, row) in k.iter().enumerate() {
            for j in 0..8 {
                n[i][j] -= (0..4).map(|m| row[m] * self.p[m][j]).sum::<f64>();
            }
        }
        for i in 0..8 {
            for j in (i + 1)..8 {
                let v = 0.5 * (n[i][j] + n[j][i]);
                n[i][j] = v;
                n[j][i] = v;
            }
        }
        self.p = n;
    }

    pub(super) fn bbox(&self) -> BBox {
        let h = self.x[3].max(0.0);
        let w = (self.x[2] * h).max(0.0);
        let (cx, cy) = (self.x[0], self.x[1]);
        BBox::new(
            (cx - w * 0.5) as f32,
            (cy - h * 0.5) as f32,
            (cx + w * 0.5) as f32,
            (cy + h * 0.5) as f32,
        )
    }
}

/// Inverse of a 4×4 matrix by Gauss–Jordan elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn inv4(mut a: [[f64; 4]; 4]) -> Option<[[f64; 4]; 4]> {
    let mut inv = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for c in 0..4 {
        let piv = (c..4).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))?;
        let pv = a[piv][c].abs();
        if pv.is_nan() || pv <= 1e-300 {
            return None;
        }
        a.swap(c, piv);
        inv.swap(c, piv);
        let d = 1.0 / a[c][c];
        for j in 0..4 {
            a[c][j] *= d;
            inv[c][j] *= d;
        }
        for r in 0..4 {
            if r != c {
                let f = a[r][c];
                if f != 0.0 {
                    for j in 0..4 {
                        a[r][j] -= f * a[c][j];
                        inv[r][j] -= f * inv[c][j];
                    }
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn inv4_inverts() {
        let m = [
            [4.0, 1.0, 0.0, 0.5],
            [1.0, 3.0, 0.2, 0.0],
            [0.0, 0.2, 2.0, 0.1],
            [0.5, 0.0, 0.1, 1.0],
        ];
        let inv = inv4(m).unwrap();
        for i in 0..4 {
            for j in 0..4 {
                let v: f64 = (0..4).map(|k| m[i][k] * inv[k][j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "({i},{j}) = {v}");
            }
        }
        assert!(inv4([[0.0; 4]; 4]).is_none());
    }

    #[test]
    fn kalman_learns_constant_velocity() {
        let mut kf = Kalman::new([0.1, 0.5, 0.5, 0.2]);
        for k in 1..=30 {
            kf.predict();
            kf.update([0.1 + 0.01 * k as f64, 0.5, 0.5, 0.2]);
        }
        assert!((kf.x[4] - 0.01).abs() < 1e-3, "vx = {}", kf.x[4]);
        kf.predict();
        assert!((kf.x[0] - 0.41).abs() < 2e-3, "cx = {}", kf.x[0]);
    }
}
