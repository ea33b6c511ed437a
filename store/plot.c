/* plot.c — a small SVG line-chart renderer for metric curves: it draws the series it is given
 * (no knowledge of runs or metrics) with a title, axis labels, 1-2-5 ticks, a grid, a legend,
 * optional EMA smoothing over the faint raw curve, and an optional log y axis. */
#include "store/store.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tableau 10: distinct hues that stay distinguishable for the common colour-vision deficiencies
 * when used in this order for the first few series. */
static const char *const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define N_PALETTE (sizeof palette / sizeof palette[0])

#define FONT "DejaVu Sans, Helvetica, Arial, sans-serif"
#define MAX_TICKS 32

/* ---- a growable string ---- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        MT_ASSERT(k >= 0);
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        b->cap = (b->cap + (size_t)k + 1) * 2;
        b->p = mt_xrealloc(b->p, b->cap);
    }
}

/* Text as XML character data or attribute value. */
static void sb_escaped(sbuf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': sb_printf(b, "&amp;"); break;
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        default: sb_printf(b, "%c", *s);
        }
    }
}

/* ---- ticks ---- */

static double nice_step(double range, int target) {
    double raw = range / (target > 1 ? target : 1);
    double mag = pow(10, floor(log10(raw)));
    double norm = raw / mag;
    double m = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
    return m * mag;
}

size_t mt_plot_ticks(double lo, double hi, int target, double *ticks, size_t cap) {
    if (!(hi > lo) || !isfinite(lo) || !isfinite(hi) || cap == 0) return 0;
    double step = nice_step(hi - lo, target);
    /* rounding the step up can leave a short range with one tick: step down the 1-2-5 ladder
     * until at least half the target (and never fewer than two) fit */
    int want = target / 2 > 2 ? target / 2 : 2;
    for (int guard = 0; guard < 8; guard++) {
        double count = floor(hi / step + 1e-9) - ceil(lo / step - 1e-9) + 1;
        if (count >= want) break;
        double mag = pow(10, floor(log10(step) + 1e-9)), m = round(step / mag);
        step = m == 5 ? 2 * mag : m == 2 ? mag : 0.5 * mag;
    }
    double first = ceil(lo / step - 1e-9);
    size_t n = 0;
    /* multiply instead of accumulating so that 0.1 + 0.1 + 0.1 does not drift off 0.3 */
    for (double i = first; n < cap; i++) {
        double v = i * step;
        if (v > hi + step * 1e-9) break;
        ticks[n++] = fabs(v) < step * 1e-9 ? 0 : v;
    }
    return n;
}

/* Ticks for a log axis spanning [10^llo, 10^lhi], as values. Wide ranges get powers of ten,
 * narrower ones 1-2-5 or every integer mantissa; within one short decade, linear nice ticks. */
static size_t log_ticks(double llo, double lhi, double *ticks, size_t cap) {
    static const double sets[3][9] = {{1}, {1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
    static const int set_n[3] = {1, 3, 9};
    double vlo = pow(10, llo), vhi = pow(10, lhi);
    for (int k = 0; k < 3; k++) {
        size_t n = 0;
        int stride = 1;
        if (k == 0) stride = (int)ceil((lhi - llo) / 8); /* at most about eight decades labelled */
        if (stride < 1) stride = 1;
        for (int e = (int)floor(llo); e <= (int)ceil(lhi) && n < cap; e++) {
            if (k == 0 && e % stride != 0) continue;
            for (int j = 0; j < set_n[k] && n < cap; j++) {
                double v = sets[k][j] * pow(10, e);
                if (v >= vlo * (1 - 1e-9) && v <= vhi * (1 + 1e-9)) ticks[n++] = v;
            }
        }
        if (n >= (k == 2 ? 5 : 3) && n <= 12) return n;
    }
    /* less than a decade: evenly spaced nice values read better than 2, 3, 4 */
    return mt_plot_ticks(vlo, vhi, 6, ticks, cap);
}

/* Label text for a tick value. Fixed notation with as many decimals as the step needs; on an
 * axis whose values are all tiny or huge (learning rates), every label in the short scientific
 * form "1.5e-4", so that one axis never mixes "0.00020" with "5e-05". */
static void tick_label(char *out, size_t cap, double v, double step, bool sci) {
    if (v == 0) {
        snprintf(out, cap, "0");
    } else if (sci) {
        int e = (int)floor(log10(fabs(v)) + 1e-9);
        snprintf(out, cap, "%.4ge%d", v / pow(10, e), e);
    } else if (step <= 0) {
        snprintf(out, cap, "%g", v);
    } else {
        int dec = (int)-floor(log10(step) + 1e-9);
        if (dec < 0) dec = 0;
        snprintf(out, cap, "%.*f", dec, v);
    }
}

static bool axis_needs_sci(const double *t, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(t[i]));
    return m > 0 && (m < 1e-3 || m >= 1e6);
}

/* ---- geometry ---- */

typedef struct frame {
    double px0, px1, py0, py1; /* plot area in pixels; py0 is the top */
    double xlo, xhi, ylo, yhi; /* data range; y in log10 units when log_y */
    bool log_y;
} frame;

static double fx(const frame *f, double x) { return f->px0 + (x - f->xlo) / (f->xhi - f->xlo) * (f->px1 - f->px0); }

static double fy(const frame *f, double y) {
    double v = f->log_y ? log10(y) : y;
    return f->py1 - (v - f->ylo) / (f->yhi - f->ylo) * (f->py1 - f->py0);
}

static bool usable(const frame *f, double x, double y) { return isfinite(x) && isfinite(y) && (!f->log_y || y > 0); }

/* Debiased exponential moving average (as TensorBoard's smoothing): early points are not pulled
 * towards zero. Non-finite inputs stay gaps and do not disturb the average. */
static double *ema(const double *y, size_t n, double a) {
    double *out = mt_xmalloc((n ? n : 1) * sizeof *out);
    double acc = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(y[i])) {
            out[i] = NAN;
            continue;
        }
        acc = a * acc + (1 - a) * y[i];
        w = a * w + (1 - a);
        out[i] = acc / w;
    }
    return out;
}

/* A polyline through the usable points. Runs of points that fall into the same pixel column
 * are reduced to their lowest and highest (in their original order), so a 100k-step curve stays
 * a small file yet keeps its spikes. A gap (non-finite value) starts a new sub-path. */
static void path_d(sbuf *b, const frame *f, const double *x, const double *y, size_t n) {
    bool pen_down = false, any = false;
    size_t i = 0;
    while (i < n) {
        if (!usable(f, x[i], y[i])) {
            pen_down = false;
            i++;
            continue;
        }
        long col = lround(fx(f, x[i]));
        size_t lo = i, hi = i, j = i + 1;
        while (j < n && usable(f, x[j], y[j]) && lround(fx(f, x[j])) == col) {
            if (y[j] < y[lo]) lo = j;
            if (y[j] > y[hi]) hi = j;
            j++;
        }
        size_t pick[2] = {lo < hi ? lo : hi, lo < hi ? hi : lo};
        int npick = lo == hi ? 1 : 2;
        if (j - i == 1) pick[0] = i, npick = 1;
        for (int k = 0; k < npick; k++) {
            size_t p = pick[k];
            sb_printf(b, "%s%.1f,%.1f", pen_down ? " L" : any ? " M" : "M", fx(f, x[p]), fy(f, y[p]));
            pen_down = any = true;
        }
        i = j;
    }
}

static void draw_path(sbuf *b, const frame *f, const double *x, const double *y, size_t n, const char *color,
                      double width, double opacity, const char *dash, size_t index, const char *role) {
    sb_printf(b, "<path data-series=\"%zu\" data-role=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\"", index,
              role, color, width);
    if (opacity < 1) sb_printf(b, " stroke-opacity=\"%.2f\"", opacity);
    if (dash) sb_printf(b, " stroke-dasharray=\"%s\"", dash);
    sb_printf(b, " stroke-linejoin=\"round\" stroke-linecap=\"round\" d=\"");
    path_d(b, f, x, y, n);
    sb_printf(b, "\"/>\n");
}

static void draw_markers(sbuf *b, const frame *f, const mt_plot_series *s, const char *color, size_t index) {
    sb_printf(b, "<g data-series=\"%zu\" data-role=\"points\" fill=\"%s\" stroke=\"white\" stroke-width=\"1.2\">\n",
              index, color);
    for (size_t i = 0; i < s->n; i++)
        if (usable(f, s->x[i], s->y[i]))
            sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\"/>\n", fx(f, s->x[i]), fy(f, s->y[i]));
    sb_printf(b, "</g>\n");
}

/* ---- the chart ---- */

static mt_status data_range(const mt_plot_opts *o, const mt_plot_series *series, size_t n_series, frame *f,
                            mt_error *err) {
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (size_t k = 0; k < n_series; k++) {
        const mt_plot_series *s = &series[k];
        for (size_t i = 0; i < s->n; i++) {
            double x = s->x[i], y = s->y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            if (o->log_y && y <= 0)
                return mt_error_set(err, MT_ERR_INVALID,
                                    "plot: series '%s' has y = %g at x = %g, which a log axis cannot show",
                                    s->label ? s->label : "?", y, x);
            double v = o->log_y ? log10(y) : y;
            if (x < xlo) xlo = x;
            if (x > xhi) xhi = x;
            if (v < ylo) ylo = v;
            if (v > yhi) yhi = v;
        }
    }
    if (!(xlo <= xhi))
        return mt_error_set(err, MT_ERR_INVALID, "plot: nothing to draw (every series is empty or non-finite)");
    if (xhi == xlo) xlo -= 1, xhi += 1;
    if (yhi == ylo) {
        double d = ylo != 0 && !o->log_y ? fabs(ylo) * 0.1 : 0.5;
        ylo -= d, yhi += d;
    }
    /* a little air above and below the curves; x spans the data exactly (steps start and end) */
    double pad = 0.05 * (yhi - ylo);
    f->xlo = xlo, f->xhi = xhi, f->ylo = ylo - pad, f->yhi = yhi + pad;
    f->log_y = o->log_y;
    return MT_OK;
}

static void draw_axes(sbuf *b, const mt_plot_opts *o, const frame *f, int height) {
    double xt[MAX_TICKS], yt[MAX_TICKS];
    size_t nx = mt_plot_ticks(f->xlo, f->xhi, 8, xt, MAX_TICKS);
    size_t ny = f->log_y ? log_ticks(f->ylo, f->yhi, yt, MAX_TICKS) : mt_plot_ticks(f->ylo, f->yhi, 6, yt, MAX_TICKS);
    double xstep = nx > 1 ? xt[1] - xt[0] : 1, ystep = ny > 1 ? yt[1] - yt[0] : 1;
    /* log ticks are not evenly spaced: their labels get plain %g (1, 2, 5, 10, ...) */
    if (f->log_y) ystep = 0;
    bool xsci = axis_needs_sci(xt, nx), ysci = axis_needs_sci(yt, ny);
    char label[64];

    sb_printf(b, "<g stroke=\"#e6e6e6\" stroke-width=\"1\">\n");
    for (size_t i = 0; i < nx; i++)
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", fx(f, xt[i]), f->py0, fx(f, xt[i]), f->py1);
    for (size_t i = 0; i < ny; i++)
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", f->px0, fy(f, yt[i]), f->px1, fy(f, yt[i]));
    sb_printf(b, "</g>\n");
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#808080\"/>\n", f->px0,
              f->py0, f->px1 - f->px0, f->py1 - f->py0);

    sb_printf(b, "<g font-size=\"12\" fill=\"#333\" data-role=\"x-ticks\" text-anchor=\"middle\">\n");
    for (size_t i = 0; i < nx; i++) {
        tick_label(label, sizeof label, xt[i], xstep, xsci);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#808080\"/>", fx(f, xt[i]), f->py1,
                  fx(f, xt[i]), f->py1 + 5);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", fx(f, xt[i]), f->py1 + 19, label);
    }
    sb_printf(b, "</g>\n<g font-size=\"12\" fill=\"#333\" data-role=\"y-ticks\" text-anchor=\"end\">\n");
    for (size_t i = 0; i < ny; i++) {
        tick_label(label, sizeof label, yt[i], ystep, ysci);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#808080\"/>", f->px0 - 5,
                  fy(f, yt[i]), f->px0, fy(f, yt[i]));
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", f->px0 - 8, fy(f, yt[i]) + 4, label);
    }
    sb_printf(b, "</g>\n");

    if (o->title) {
        sb_printf(b, "<text x=\"%.1f\" y=\"30\" font-size=\"18\" font-weight=\"bold\" fill=\"#222\" text-anchor=\"middle\" "
                     "data-role=\"title\">",
                  (f->px0 + f->px1) / 2);
        sb_escaped(b, o->title);
        sb_printf(b, "</text>\n");
    }
    if (o->x_label) {
        sb_printf(b, "<text x=\"%.1f\" y=\"%d\" font-size=\"14\" fill=\"#222\" text-anchor=\"middle\" data-role=\"x-label\">",
                  (f->px0 + f->px1) / 2, height - 14);
        sb_escaped(b, o->x_label);
        sb_printf(b, "</text>\n");
    }
    if (o->y_label) {
        double cy = (f->py0 + f->py1) / 2;
        sb_printf(b,
                  "<text x=\"20\" y=\"%.1f\" font-size=\"14\" fill=\"#222\" text-anchor=\"middle\" "
                  "transform=\"rotate(-90 20 %.1f)\" data-role=\"y-label\">",
                  cy, cy);
        sb_escaped(b, o->y_label);
        if (f->log_y) sb_printf(b, ", log scale");
        sb_printf(b, "</text>\n");
    }
}

/* Data points (and points along the segments between them) that would fall under a box. */
static size_t covered(const frame *f, const mt_plot_series *series, size_t n_series, double x, double y, double w,
                      double h) {
    size_t n = 0;
    for (size_t k = 0; k < n_series; k++) {
        const mt_plot_series *s = &series[k];
        double px = NAN, py = NAN;
        for (size_t i = 0; i < s->n; i++) {
            if (!usable(f, s->x[i], s->y[i])) {
                px = NAN;
                continue;
            }
            double qx = fx(f, s->x[i]), qy = fy(f, s->y[i]);
            int steps = isnan(px) ? 1 : 8;
            for (int j = 1; j <= steps; j++) {
                double t = (double)j / steps;
                double cx = isnan(px) ? qx : px + t * (qx - px), cy = isnan(py) ? qy : py + t * (qy - py);
                n += cx >= x - 6 && cx <= x + w + 6 && cy >= y - 6 && cy <= y + h + 6;
            }
            px = qx, py = qy;
        }
    }
    return n;
}

/* The corner (or side middle) of the plot area where the legend hides the least of the curves;
 * top right when it hides nothing there, as a reader looks there first. */
static void legend_corner(const frame *f, const mt_plot_series *series, size_t n_series, double w, double h, double *x,
                          double *y) {
    double right = f->px1 - w - 10, left = f->px0 + 10;
    double top = f->py0 + 10, bottom = f->py1 - h - 10, middle = (f->py0 + f->py1 - h) / 2;
    const double cx[6] = {right, left, right, left, right, left};
    const double cy[6] = {top, top, bottom, bottom, middle, middle};
    size_t best = (size_t)-1;
    *x = cx[0], *y = cy[0];
    for (int c = 0; c < 6; c++) {
        size_t n = covered(f, series, n_series, cx[c], cy[c], w, h);
        if (n < best) best = n, *x = cx[c], *y = cy[c];
        if (n == 0) break;
    }
}

static void draw_legend(sbuf *b, const mt_plot_opts *o, const frame *f, const mt_plot_series *series, size_t n_series) {
    size_t longest = 0;
    for (size_t k = 0; k < n_series; k++) {
        size_t len = series[k].label ? strlen(series[k].label) : 0;
        if (series[k].smooth && o->ema > 0) len += 12;
        if (len > longest) longest = len;
    }
    /* about 7 px per character at 12 px: wide enough for DejaVu Sans without measuring text */
    double w = 44 + 7.0 * (double)longest, row = 20, h = 10 + row * (double)n_series;
    double x, y;
    legend_corner(f, series, n_series, w, h, &x, &y);
    sb_printf(b, "<g data-role=\"legend\" font-size=\"12\" fill=\"#222\">\n");
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" rx=\"4\" fill=\"white\" fill-opacity=\"0.9\" "
                 "stroke=\"#cccccc\"/>\n",
              x, y, w, h);
    for (size_t k = 0; k < n_series; k++) {
        const mt_plot_series *s = &series[k];
        const char *color = palette[k % N_PALETTE];
        double cy = y + 5 + row * ((double)k + 0.5);
        bool points = s->style == MT_PLOT_POINTS;
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"%s\"%s/>", x + 8,
                  cy, x + 32, cy, color, points ? "1.5" : "2.5", points ? " stroke-dasharray=\"4 3\"" : "");
        if (points) sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" stroke=\"white\"/>", x + 20, cy, color);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\">", x + 38, cy + 4);
        sb_escaped(b, s->label ? s->label : "");
        if (s->smooth && o->ema > 0) sb_printf(b, " (EMA %.2g)", o->ema);
        sb_printf(b, "</text>\n");
    }
    sb_printf(b, "</g>\n");
}

mt_status mt_plot_svg(const mt_plot_opts *opts, const mt_plot_series *series, size_t n_series, char **svg,
                      mt_error *err) {
    *svg = NULL;
    if (!(opts->ema >= 0 && opts->ema < 1))
        return mt_error_set(err, MT_ERR_INVALID, "plot: smoothing weight %g must be in [0, 1)", opts->ema);
    int width = opts->width > 0 ? opts->width : 960, height = opts->height > 0 ? opts->height : 560;
    if (width < 240 || height < 160 || width > 10000 || height > 10000)
        return mt_error_set(err, MT_ERR_INVALID, "plot: size %dx%d is outside 240x160 .. 10000x10000", width, height);
    frame f = {.px0 = 84, .px1 = width - 24, .py0 = 48, .py1 = height - 62};
    mt_status st = data_range(opts, series, n_series, &f, err);
    if (st != MT_OK) return st;

    sbuf b = {0};
    sb_printf(&b,
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
              "font-family=\"" FONT "\">\n",
              width, height, width, height);
    if (opts->title) {
        sb_printf(&b, "<title>");
        sb_escaped(&b, opts->title);
        sb_printf(&b, "</title>\n");
    }
    sb_printf(&b, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", width, height);
    sb_printf(&b, "<defs><clipPath id=\"plot-area\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath></defs>\n",
              f.px0, f.py0, f.px1 - f.px0, f.py1 - f.py0);
    draw_axes(&b, opts, &f, height);

    sb_printf(&b, "<g clip-path=\"url(#plot-area)\">\n");
    /* every faint raw curve first, so that no smoothed curve is drawn under another's raw one */
    for (size_t k = 0; k < n_series; k++) {
        const mt_plot_series *s = &series[k];
        if (s->smooth && opts->ema > 0)
            draw_path(&b, &f, s->x, s->y, s->n, palette[k % N_PALETTE], 1.2, 0.25, NULL, k, "raw");
    }
    for (size_t k = 0; k < n_series; k++) {
        const mt_plot_series *s = &series[k];
        const char *color = palette[k % N_PALETTE];
        if (s->style == MT_PLOT_POINTS) {
            draw_path(&b, &f, s->x, s->y, s->n, color, 1.5, 1, "5 4", k, "line");
        } else if (s->smooth && opts->ema > 0) {
            double *sm = ema(s->y, s->n, opts->ema);
            draw_path(&b, &f, s->x, sm, s->n, color, 2.2, 1, NULL, k, "line");
            free(sm);
        } else {
            draw_path(&b, &f, s->x, s->y, s->n, color, 2.0, 1, NULL, k, "line");
        }
    }
    sb_printf(&b, "</g>\n");
    /* markers lie inside the data range; unclipped, the ones on the first and last step stay round */
    for (size_t k = 0; k < n_series; k++)
        if (series[k].style == MT_PLOT_POINTS) draw_markers(&b, &f, &series[k], palette[k % N_PALETTE], k);
    draw_legend(&b, opts, &f, series, n_series);
    sb_printf(&b, "</svg>\n");
    *svg = b.p;
    return MT_OK;
}
