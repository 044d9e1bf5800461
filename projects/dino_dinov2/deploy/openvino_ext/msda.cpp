// The deformable attention's sampling as one OpenVINO operation (CPU), for the graphs of
// tools/export.py --deform-attn openvino: mmcv's multi_scale_deformable_attn_pytorch
// (bilinear, align_corners=False, zero padding) fused into one loop over (batch, query,
// head) with the 32 channels of a head contiguous, on the value laid out (tokens, heads,
// channels) as the model computes it: no transposes, no GridSample.
//
// ONNX node: dino_dinov2::MSDeformAttn(value (B, S, H, C), sampling_locations
// (B, Q, H, L, P, 2), attention_weights (B, Q, H, L, P)) -> (B, Q, H*C); attribute
// spatial_shapes (ints, h0 w0 h1 w1 ...). Built by projects/dino_dinov2/deploy/openvino_ext.py.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <cmath>
#include <cstring>
#include <vector>

namespace dino_dinov2 {

// One query's heads: out (H, C) = sum over levels and points of the attention weight times
// the bilinear sample of value (S, H, C). Compiled for AVX-512, AVX2 and the baseline; the
// loader picks the CPU's (the 32 channels of a head are two AVX-512 registers).
__attribute__((target_clones("avx512f", "avx2", "default")))
static void sample_query(const float* value, const float* loc, const float* att, float* out,
                         size_t H, size_t C, size_t L, size_t P, const size_t* start,
                         const size_t* hs, const size_t* ws) {
    for (size_t h = 0; h < H; ++h) {
        float* o = out + h * C;
        for (size_t c = 0; c < C; ++c) o[c] = 0.f;
        for (size_t l = 0; l < L; ++l) {
            const long hl = static_cast<long>(hs[l]), wl = static_cast<long>(ws[l]);
            const float* vl = value + start[l] * H * C + h * C;
            for (size_t p = 0; p < P; ++p, loc += 2, ++att) {
                const float x = loc[0] * wl - 0.5f, y = loc[1] * hl - 0.5f;
                // wholly outside (or NaN): zero padding adds nothing; the casts below
                // then only see values inside the level
                if (!(x > -1.f && y > -1.f && x < wl && y < hl)) continue;
                const float fx0 = std::floor(x), fy0 = std::floor(y);
                const long x0 = static_cast<long>(fx0), y0 = static_cast<long>(fy0);
                const float dx = x - fx0, dy = y - fy0, a = *att;
                const float wts[4] = {(1 - dx) * (1 - dy) * a, dx * (1 - dy) * a,
                                      (1 - dx) * dy * a, dx * dy * a};
                for (int k = 0; k < 4; ++k) {
                    const long cx = x0 + (k & 1), cy = y0 + (k >> 1);
                    if (cx < 0 || cy < 0 || cx >= wl || cy >= hl) continue;
                    const float* __restrict v = vl + (cy * wl + cx) * H * C;
                    const float w = wts[k];
                    for (size_t c = 0; c < C; ++c) o[c] += w * v[c];
                }
            }
        }
    }
}

class MSDeformAttn : public ov::op::Op {
public:
    OPENVINO_OP("MSDeformAttn", "dino_dinov2");

    MSDeformAttn() = default;
    MSDeformAttn(const ov::OutputVector& args, std::vector<int64_t> spatial_shapes)
        : Op(args), m_spatial_shapes(std::move(spatial_shapes)) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        const auto& v = get_input_partial_shape(0);
        const auto& l = get_input_partial_shape(1);
        if (v.rank().is_static() && l.rank().is_static()) {
            set_output_type(0, get_input_element_type(0),
                            ov::PartialShape{v[0], l[1], v[2] * v[3]});
        } else {
            set_output_type(0, get_input_element_type(0), ov::PartialShape::dynamic(3));
        }
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<MSDeformAttn>(args, m_spatial_shapes);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("spatial_shapes", m_spatial_shapes);
        return true;
    }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto vs = inputs[0].get_shape();  // B, S, H, C
        const auto ls = inputs[1].get_shape();  // B, Q, H, L, P, 2
        const size_t B = vs[0], S = vs[1], H = vs[2], C = vs[3];
        const size_t Q = ls[1], L = ls[3], P = ls[4];
        outputs[0].set_shape(ov::Shape{B, Q, H * C});
        const float* value = inputs[0].data<const float>();
        const float* loc = inputs[1].data<const float>();
        const float* att = inputs[2].data<const float>();
        float* out = outputs[0].data<float>();
        std::vector<size_t> start(L), hs(L), ws(L);
        size_t s0 = 0;
        for (size_t l = 0; l < L; ++l) {
            hs[l] = static_cast<size_t>(m_spatial_shapes[2 * l]);
            ws[l] = static_cast<size_t>(m_spatial_shapes[2 * l + 1]);
            start[l] = s0;
            s0 += hs[l] * ws[l];
        }
        if (s0 != S) return false;
        ov::parallel_for(B * Q, [&](size_t bq) {
            sample_query(value + (bq / Q) * S * H * C, loc + bq * H * L * P * 2,
                         att + bq * H * L * P, out + bq * H * C, H, C, L, P, start.data(),
                         hs.data(), ws.data());
        });
        return true;
    }

private:
    std::vector<int64_t> m_spatial_shapes;
};

}  // namespace dino_dinov2

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<dino_dinov2::MSDeformAttn>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<dino_dinov2::MSDeformAttn>>(
        "MSDeformAttn", "dino_dinov2"),
}));
