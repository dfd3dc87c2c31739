//! Plane geometry on normalised points: polygons for zones, segments for lines.

/// A point `[x, y]`, normalised coordinates, y down.
pub type Point = [f32; 2];

/// Twice the signed area of the triangle (a, b, c): > 0 when c lies to the right of a→b in
/// image coordinates (y down), < 0 to the left, 0 when collinear.
pub fn cross(a: Point, b: Point, c: Point) -> f32 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

fn on_segment(a: Point, b: Point, p: Point) -> bool {
    p[0] >= a[0].min(b[0])
        && p[0] <= a[0].max(b[0])
        && p[1] >= a[1].min(b[1])
        && p[1] <= a[1].max(b[1])
}

/// Whether the closed segments a1–a2 and b1–b2 share at least one point.
pub fn segments_intersect(a1: Point, a2: Point, b1: Point, b2: Point) -> bool {
    let d1 = cross(b1, b2, a1);
    let d2 = cross(b1, b2, a2);
    let d3 = cross(a1, a2, b1);
    let d4 = cross(a1, a2, b2);
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on_segment(b1, b2, a1))
        || (d2 == 0.0 && on_segment(b1, b2, a2))
        || (d3 == 0.0 && on_segment(a1, a2, b1))
        || (d4 == 0.0 && on_segment(a1, a2, b2))
}

/// If the polygon (implicitly closed) is not simple, the indices of two edges that cross
/// (edge i joins vertex i and vertex i+1). Adjacent edges share a vertex and are not counted;
/// a repeated vertex or a zero-area polygon is reported as edges (0, 0).
pub fn polygon_self_intersection(poly: &[Point]) -> Option<(usize, usize)> {
    let n = poly.len();
    if n < 3 {
        return None;
    }
    for i in 0..n {
        for j in (i + 1)..n {
            if poly[i] == poly[j] {
                return Some((i, j));
            }
        }
    }
    for i in 0..n {
        let (a1, a2) = (poly[i], poly[(i + 1) % n]);
        for j in (i + 1)..n {
            let adjacent = j == i + 1 || (i == 0 && j == n - 1);
            if adjacent {
                continue;
            }
            let (b1, b2) = (poly[j], poly[(j + 1) % n]);
            if segments_intersect(a1, a2, b1, b2) {
                return Some((i, j));
            }
        }
    }
    let area2: f32 = (0..n)
        .map(|i| {
            let (p, q) = (poly[i], poly[(i + 1) % n]);
            p[0] * q[1] - q[0] * p[1]
        })
        .sum();
    if area2.abs() < 1e-9 {
        Some((0, 0))
    } else {
        None
    }
}

/// Point-in-polygon by ray casting; points exactly on an edge count as inside.
pub fn point_in_polygon(poly: &[Point], p: Point) -> bool {
    let n = poly.len();
    let mut inside = false;
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (poly[i], poly[j]);
        if cross(a, b, p) == 0.0 && on_segment(a, b, p) {
            return true;
        }
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0];
            if p[0] < x {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Distance from `p` to the nearest edge of `poly`, with x scaled by `sx` first (a frame's
/// width / height: the distance is then in units of the frame's height, as pixels measure it).
pub fn distance_to_polygon(poly: &[Point], p: Point, sx: f32) -> f32 {
    let n = poly.len();
    let mut best = f32::INFINITY;
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (poly[j], poly[i]);
        let (ax, ay, bx, by, px, py) = (a[0] * sx, a[1], b[0] * sx, b[1], p[0] * sx, p[1]);
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
        best = best.min((qx * qx + qy * qy).sqrt());
        j = i;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_is_simple_and_bowtie_is_not() {
        let sq = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]];
        assert_eq!(polygon_self_intersection(&sq), None);
        let bowtie = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]];
        assert_eq!(polygon_self_intersection(&bowtie), Some((0, 2)));
        let flat = [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]];
        assert!(polygon_self_intersection(&flat).is_some());
    }

    #[test]
    fn point_in_polygon_inside_outside_edge() {
        let sq = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]];
        assert!(point_in_polygon(&sq, [0.5, 0.5]));
        assert!(!point_in_polygon(&sq, [0.95, 0.5]));
        assert!(point_in_polygon(&sq, [0.9, 0.5]));
    }

    #[test]
    fn distance_to_polygon_is_to_the_nearest_edge_in_pixel_proportions() {
        let sq = [[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.2, 0.6]];
        // Beside an edge, beyond a corner, on an edge.
        assert!((distance_to_polygon(&sq, [0.7, 0.4], 1.0) - 0.1).abs() < 1e-6);
        assert!((distance_to_polygon(&sq, [0.7, 0.7], 1.0) - 0.02f32.sqrt()).abs() < 1e-6);
        assert!(distance_to_polygon(&sq, [0.6, 0.4], 1.0) < 1e-6);
        // A 16:9 frame: 0.1 of the width is 0.178 of the height.
        assert!((distance_to_polygon(&sq, [0.7, 0.4], 16.0 / 9.0) - 0.1 * 16.0 / 9.0).abs() < 1e-6);
        // Inside, the distance is to the nearest edge as well.
        assert!((distance_to_polygon(&sq, [0.25, 0.4], 1.0) - 0.05).abs() < 1e-6);
    }

    #[test]
    fn cross_sign_is_right_hand_in_image_coordinates() {
        // Walking from (0, .5) to (1, .5) (rightwards), y grows downwards: below is the right side.
        assert!(cross([0.0, 0.5], [1.0, 0.5], [0.5, 0.9]) > 0.0);
        assert!(cross([0.0, 0.5], [1.0, 0.5], [0.5, 0.1]) < 0.0);
    }
}
