// qkit/io/report/html.hpp — self-contained HTML report pages: bar, floating-bar (ranges)
// and line charts drawn by the vendored Chart.js (chart_js.hpp), embedded into every page with
// the page's data, so a page opens from disk with the network off. A Content-Security-Policy
// forbids every fetch, so a page that tried one would fail visibly rather than work only online.
// Each page reports how it rendered in `#qkit-status` (data-points: chart elements drawn,
// data-errors: script errors), which the tests read back from headless Chromium.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../atomic_file.hpp"
#include "chart_js.hpp"

namespace qkit::io::report {

/// One data series of a chart: a value per category, a [low, high] range per category
/// (floating bars, e.g. an encoding's min and max), or (x, y) points on a numeric x axis (a
/// histogram's bins, a vertical marker line from two points).
struct series {
  std::string label;
  std::vector<double> values;
  std::vector<std::pair<double, double>> ranges;
  std::string type = "bar";  ///< "bar" or "line"
  std::vector<std::pair<double, double>> points;
};

/// One of several data sets a chart can show, chosen by the reader from a list on the page
/// (e.g. one channel of a per-channel weight): the page draws the first.
struct variant {
  std::string name;
  std::vector<series> data;
};

struct chart {
  std::string title;
  std::string x_label, y_label;
  std::vector<std::string> categories;  ///< empty for a numeric x axis (series of points)
  std::vector<series> data;
  std::vector<variant> variants;  ///< when not empty, replaces `data` and adds a chooser
  /// false: the y axis spans the data only (scores that differ in the third digit).
  bool y_from_zero = true;
};

struct link {
  std::string href, text;
};

/// One box of a flow diagram (AutoQuant's stages): what it is, a line of detail (its score),
/// and how it ended, which colours it: "met" (the target reached here), "applied" (ran, kept
/// as a candidate), "discarded" (ran, did not help), "stopped" (the flow ended here without the
/// target), "skipped" (not visited).
struct flow_box {
  std::string label, detail, status;
};

/// A page: a title, paragraphs of text, a flow diagram (drawn above the charts when not
/// empty), charts, and links (the index page's).
struct page {
  std::string title;
  std::vector<std::string> paragraphs;
  std::vector<chart> charts;
  std::vector<link> links;
  std::vector<flow_box> flow = {};
};

namespace detail {

inline std::string escape_html(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// JSON inside <script type="application/json">: "</" would end the element early.
inline std::string script_safe(std::string json) {
  for (std::size_t p = 0; (p = json.find("</", p)) != std::string::npos; p += 3) json.replace(p, 2, "<\\/");
  return json;
}

inline nlohmann::json to_json(const std::vector<series>& data) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : data) {
    nlohmann::json d;
    d["label"] = s.label;
    d["type"] = s.type;
    if (!s.points.empty()) {
      d["values"] = nlohmann::json::array();
      for (const auto& [x, y] : s.points) d["values"].push_back({{"x", x}, {"y", y}});
    } else if (!s.ranges.empty()) {
      d["values"] = nlohmann::json::array();
      for (const auto& [lo, hi] : s.ranges) d["values"].push_back({lo, hi});
    } else {
      d["values"] = s.values;
    }
    out.push_back(std::move(d));
  }
  return out;
}

inline nlohmann::json to_json(const chart& c) {
  nlohmann::json j;
  j["title"] = c.title;
  j["x_label"] = c.x_label;
  j["y_label"] = c.y_label;
  j["categories"] = c.categories;
  j["numeric_x"] = c.categories.empty();
  j["y_from_zero"] = c.y_from_zero;
  j["variants"] = nlohmann::json::array();
  if (c.variants.empty()) {
    j["variants"].push_back({{"name", ""}, {"data", to_json(c.data)}});
  } else {
    for (const auto& v : c.variants) j["variants"].push_back({{"name", v.name}, {"data", to_json(v.data)}});
  }
  return j;
}

// Renders every chart of the page's data and records the outcome in #qkit-status.
inline constexpr const char* page_script = R"js(
(function () {
  var status = document.getElementById('qkit-status');
  var errors = 0;
  function fail(msg) {
    errors += 1;
    status.dataset.errors = String(errors);
    status.textContent = 'error: ' + msg;
  }
  window.addEventListener('error', function (e) { fail(e.message); });
  try {
    var spec = JSON.parse(document.getElementById('qkit-data').textContent);
    var palette = ['#2f6db5', '#d9822b', '#3a9a5b', '#b03a48', '#6f4fa8'];
    var points = 0;
    function datasets(data, numeric) {
      return data.map(function (s, k) {
        var d = { label: s.label, type: s.type, data: s.values, borderWidth: 1,
                  backgroundColor: palette[k % palette.length] + (s.type === 'line' ? '00' : 'cc'),
                  borderColor: palette[k % palette.length],
                  // A series of one point marks something (AMP's chosen point): drawn larger.
                  pointRadius: s.values.length === 1 ? 6 : 2 };
        // Histogram bins touch each other on a numeric axis.
        if (numeric && s.type === 'bar') { d.barPercentage = 1; d.categoryPercentage = 1; }
        return d;
      });
    }
    spec.charts.forEach(function (c, i) {
      var x = { title: { display: true, text: c.x_label } };
      if (c.numeric_x) x.type = 'linear';
      var ch = new Chart(document.getElementById('chart-' + i), {
        type: 'bar',
        data: { labels: c.numeric_x ? undefined : c.categories,
                datasets: datasets(c.variants[0].data, c.numeric_x) },
        options: {
          animation: false, responsive: false,
          plugins: { title: { display: true, text: c.title },
                     tooltip: { callbacks: { label: function (ctx) {
                       var v = ctx.raw;
                       if (Array.isArray(v)) v = '[' + v[0] + ', ' + v[1] + ']';
                       else if (v !== null && typeof v === 'object') v = 'x ' + v.x + ': ' + v.y;
                       return ctx.dataset.label + ': ' + v;
                     } } } },
          scales: { x: x, y: { beginAtZero: c.y_from_zero, title: { display: true, text: c.y_label } } }
        }
      });
      ch.data.datasets.forEach(function (d, k) { points += ch.getDatasetMeta(k).data.length; });
      var chooser = document.getElementById('variant-' + i);
      if (chooser) chooser.addEventListener('change', function () {
        ch.data.datasets = datasets(c.variants[Number(chooser.value)].data, c.numeric_x);
        ch.update();
      });
    });
    status.dataset.points = String(points);
    if (!errors) status.textContent = 'rendered ' + points + ' chart elements';
  } catch (e) {
    fail(String(e));
  }
  status.dataset.errors = String(errors);
})();
)js";

}  // namespace detail

/// The page as one HTML document.
inline std::string render(const page& p) {
  using detail::escape_html;
  nlohmann::json spec;
  spec["charts"] = nlohmann::json::array();
  for (const auto& c : p.charts) spec["charts"].push_back(detail::to_json(c));
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
       "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n";
  h += "<title>" + escape_html(p.title) + "</title>\n";
  h += "<style>body{font-family:sans-serif;margin:1.5em;color:#222}canvas{margin:1em 0}"
       "#qkit-status{color:#888;font-size:small}li{margin:.3em 0}"
       ".qkit-flow{display:flex;flex-wrap:wrap;align-items:center;margin:1em 0}"
       ".qkit-box{border:2px solid #888;border-radius:6px;padding:.5em .8em;margin:.3em;"
       "min-width:9em;text-align:center;font-size:small;background:#f4f4f4}"
       ".qkit-arrow{font-size:1.6em;color:#666}.qkit-met{background:#cdeccd;border-color:#3a9a5b}"
       ".qkit-applied{background:#dde8f6;border-color:#2f6db5}.qkit-discarded{background:#eee;"
       "border-color:#aaa;color:#777}.qkit-stopped{background:#f6d6d9;border-color:#b03a48}"
       ".qkit-skipped{background:#fff;border-style:dashed;color:#999}</style>\n</head>\n<body>\n";
  h += "<h1>" + escape_html(p.title) + "</h1>\n";
  for (const auto& para : p.paragraphs) h += "<p>" + escape_html(para) + "</p>\n";
  if (!p.links.empty()) {
    h += "<ul>\n";
    for (const auto& l : p.links)
      h += "<li><a href=\"" + escape_html(l.href) + "\">" + escape_html(l.text) + "</a></li>\n";
    h += "</ul>\n";
  }
  if (!p.flow.empty()) {
    // Boxes joined by arrows, coloured by status; plain HTML, so it needs no script.
    h += "<div class=\"qkit-flow\">\n";
    for (std::size_t i = 0; i < p.flow.size(); ++i) {
      if (i) h += "<span class=\"qkit-arrow\">&#8594;</span>\n";
      h += "<div class=\"qkit-box qkit-" + escape_html(p.flow[i].status) + "\" data-status=\"" +
           escape_html(p.flow[i].status) + "\"><b>" + escape_html(p.flow[i].label) + "</b><br>" +
           escape_html(p.flow[i].detail) + "<br><i>" + escape_html(p.flow[i].status) + "</i></div>\n";
    }
    h += "</div>\n";
  }
  for (std::size_t i = 0; i < p.charts.size(); ++i) {
    if (p.charts[i].variants.size() > 1) {
      const std::string id = "variant-" + std::to_string(i);
      h += "<p><label for=\"" + id + "\">Show: </label><select id=\"" + id + "\">";
      for (std::size_t v = 0; v < p.charts[i].variants.size(); ++v)
        h += "<option value=\"" + std::to_string(v) + "\">" + escape_html(p.charts[i].variants[v].name) +
             "</option>";
      h += "</select></p>\n";
    }
    // Wide enough that every category keeps a readable label.
    const std::size_t width = std::max<std::size_t>(900, 26 * p.charts[i].categories.size() + 160);
    h += "<canvas id=\"chart-" + std::to_string(i) + "\" width=\"" + std::to_string(width) +
         "\" height=\"460\"></canvas>\n";
  }
  h += "<p id=\"qkit-status\" data-points=\"0\" data-errors=\"0\">not rendered</p>\n";
  h += "<script type=\"application/json\" id=\"qkit-data\">" + detail::script_safe(spec.dump()) +
       "</script>\n";
  h += "<script>\n" + detail::chart_js() + "\n</script>\n";
  h += "<script>" + std::string(detail::page_script) + "</script>\n</body>\n</html>\n";
  return h;
}

/// Writes the page to `path` (a temporary name, then renamed).
inline void write(const std::filesystem::path& path, const page& p) {
  io::write_file_atomically(path, render(p));
}

}  // namespace qkit::io::report
