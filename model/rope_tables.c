/* rope_tables.c — RoPE cos/sin tables (default, linear and YaRN scaling) and the attention
 * softmax scale, computed as transformers 5.23 does (modeling_rope_utils.py: inverse
 * frequencies in fp32, YaRN's attention factor folded into cos/sin; DeepSeek's
 * yarn_apply_mscale multiplying the softmax scale by mscale(factor, mscale_all_dim)²). */
#include <math.h>
#include <stdlib.h>

#include "model-impl.h"

/* 0.1·a·ln(s) + 1, or 1 when s <= 1 (yarn_get_mscale / get_mscale) */
static double yarn_mscale(double s, double a) { return s <= 1 ? 1.0 : 0.1 * a * log(s) + 1.0; }

static double correction_dim(double n_rot, int dim, double base, double max_pos) {
    return (dim * log(max_pos / (n_rot * 2 * 3.14159265358979323846))) / (2 * log(base));
}

/* inv_freq [dim/2] and the factor cos/sin are multiplied by. */
static double inverse_frequencies(const mt_config *cfg, int dim, float *inv) {
    int half = dim / 2;
    double base = cfg->rope_theta > 0 ? cfg->rope_theta : 10000.0;
    /* base ** (arange(0, dim, 2).float() / dim), evaluated in fp32 as torch does */
    float *pos_freq = mt_xmalloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)dim;
        pos_freq[i] = (float)pow(base, (double)expo);
        inv[i] = 1.0f / pos_freq[i];
    }
    if (cfg->rope_scaling == MT_ROPE_SCALING_LINEAR) {
        float f = (float)(cfg->rope_factor > 0 ? cfg->rope_factor : 1.0);
        for (int i = 0; i < half; i++) inv[i] /= f;
    }
    if (cfg->rope_scaling != MT_ROPE_SCALING_YARN) {
        free(pos_freq);
        return 1.0;
    }

    double factor = cfg->rope_factor;
    double orig = cfg->rope_original_max_pos > 0 ? cfg->rope_original_max_pos : cfg->max_position_embeddings;
    if (factor <= 0) factor = cfg->max_position_embeddings / orig;
    double ms = cfg->yarn_mscale, msa = cfg->yarn_mscale_all_dim;
    double attention_factor =
        (ms != 0 && msa != 0) ? yarn_mscale(factor, ms) / yarn_mscale(factor, msa) : yarn_mscale(factor, 1.0);
    double beta_fast = cfg->yarn_beta_fast != 0 ? cfg->yarn_beta_fast : 32.0;
    double beta_slow = cfg->yarn_beta_slow != 0 ? cfg->yarn_beta_slow : 1.0;
    /* find_correction_range with truncate = True (the default) */
    double low = floor(correction_dim(beta_fast, dim, base, orig));
    double high = ceil(correction_dim(beta_slow, dim, base, orig));
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001; /* linear_ramp_factor's guard against a zero range */
    for (int i = 0; i < half; i++) {
        float extrapolation = 1.0f / pos_freq[i];
        float interpolation = 1.0f / ((float)factor * pos_freq[i]);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        if (ramp < 0) ramp = 0;
        if (ramp > 1) ramp = 1;
        float extra_factor = 1.0f - ramp;
        inv[i] = interpolation * (1.0f - extra_factor) + extrapolation * extra_factor;
    }
    free(pos_freq);
    return attention_factor;
}

mt_status mt_rope_init(mt_model *m, mt_error *err) {
    const mt_config *cfg = &m->cfg;
    mt_dims d;
    mt_model_dims(cfg, &d);
    m->rot_dim = cfg->mla ? d.rope : d.hd;
    m->rope_len = cfg->max_position_embeddings;
    if (m->rope_len <= 0)
        return mt_error_set(err, MT_ERR_INVALID, "model: max_position_embeddings must be positive, not %d", m->rope_len);
    int half = m->rot_dim / 2;
    float *inv = mt_xmalloc((size_t)(half > 0 ? half : 1) * sizeof(float));
    double af = inverse_frequencies(cfg, m->rot_dim, inv);
    size_t n = (size_t)m->rope_len * (size_t)half;
    float *c = mt_xmalloc((n ? n : 1) * sizeof(float));
    float *s = mt_xmalloc((n ? n : 1) * sizeof(float));
    float fa = (float)af;
    for (int p = 0; p < m->rope_len; p++)
        for (int i = 0; i < half; i++) {
            float f = (float)p * inv[i]; /* position × inv_freq in fp32, as transformers */
            c[(size_t)p * half + i] = (float)cos((double)f) * fa;
            s[(size_t)p * half + i] = (float)sin((double)f) * fa;
        }
    free(inv);
    m->rope_cos = mt_backend_alloc(m->be, (n ? n : 1) * sizeof(float));
    m->rope_sin = mt_backend_alloc(m->be, (n ? n : 1) * sizeof(float));
    if (!m->rope_cos || !m->rope_sin) {
        free(c);
        free(s);
        return mt_error_set(err, MT_ERR_NOMEM, "model: cannot allocate the RoPE tables (%d positions)", m->rope_len);
    }
    mt_backend_upload(m->be, m->rope_cos, c, n * sizeof(float));
    mt_backend_upload(m->be, m->rope_sin, s, n * sizeof(float));
    free(c);
    free(s);

    double scale = 1.0 / sqrt((double)d.qk_hd);
    /* DeepSeek (V2 and V3 alike in transformers 5.23's built-in code, yarn_apply_mscale): any
     * rope type other than default with mscale_all_dim set multiplies the softmax scale by
     * mscale(factor, mscale_all_dim)². DeepSeek's remote V2 code agrees; an older built-in V2
     * in transformers omitted it — we follow the installed transformers. */
    if (cfg->mla && cfg->rope_scaling != MT_ROPE_SCALING_NONE && cfg->yarn_mscale_all_dim != 0) {
        double ms = yarn_mscale(cfg->rope_factor, cfg->yarn_mscale_all_dim);
        scale *= ms * ms;
    }
    m->attn_scale = (float)scale;
    return MT_OK;
}
