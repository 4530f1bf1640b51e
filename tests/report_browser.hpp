// tests/report_browser.hpp — opens a report page in headless Chromium (Debian's `chromium`,
// installed by scripts/deps.sh) with the network off, and reads back how it rendered: the chart
// elements the page reports drawing, the script errors it caught, every console message, and a
// screenshot that stays for a person to look at; and reads a report's JSON. Shared by the
// suites that write reports.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

namespace report_browser {

// How a page rendered in headless Chromium with the network off: the chart elements the page
// reports drawing, script errors it caught, and every console message Chromium logged (the
// pages log nothing; Chromium logs uncaught errors and console.error alike as CONSOLE lines).
struct rendered {
  int points = -1, errors = -1;
  int flow_boxes = 0;  ///< boxes of the page's flow diagram in the rendered DOM
  std::vector<std::string> console;
};

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A report's JSON file, parsed (a missing file fails the test, naming it).
inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  REQUIRE_MESSAGE(in.good(), "missing ", p.string());
  return nlohmann::json::parse(in);
}

inline int attribute(const std::string& dom, const std::string& name) {
  const std::string key = name + "=\"";
  const auto at = dom.find(key);
  return at == std::string::npos ? -1 : std::atoi(dom.c_str() + at + key.size());
}

inline rendered render_in_chromium(const std::filesystem::path& page, const std::filesystem::path& png) {
  REQUIRE_MESSAGE(std::system("command -v chromium >/dev/null 2>&1") == 0,
                  "chromium not found: scripts/deps.sh installs Debian's chromium");
  const std::filesystem::path dom = png.string() + ".dom", log = png.string() + ".log";
  // No proxy that answers and no name that resolves: the page must not need the network
  // (its Content-Security-Policy also forbids every fetch).
  const std::string flags =
      "--headless=new --no-sandbox --disable-gpu --no-first-run --disable-extensions "
      "--disable-background-networking --proxy-server=127.0.0.1:9 "
      "--host-resolver-rules='MAP * ~NOTFOUND' --enable-logging=stderr --v=0 "
      "--virtual-time-budget=3000 --window-size=1400,900 ";
  const std::string url = "file://" + std::filesystem::absolute(page).string();
  // A profile of its own: two Chromiums on one profile hand the page to each other.
  const std::string profile = "--user-data-dir='" + png.string() + ".profile' ";
  REQUIRE(std::system(("chromium " + flags + profile + "--dump-dom '" + url + "' > '" + dom.string() +
                       "' 2> '" + log.string() + "'").c_str()) == 0);
  REQUIRE(std::system(("chromium " + flags + profile + "--screenshot='" + png.string() + "' '" + url +
                       "' > /dev/null 2>> '" + log.string() + "'").c_str()) == 0);
  std::filesystem::remove_all(png.string() + ".profile");
  rendered r;
  const std::string d = read_text(dom);
  r.points = attribute(d, "data-points");
  r.errors = attribute(d, "data-errors");
  for (std::size_t at = d.find("class=\"qkit-box"); at != std::string::npos; at = d.find("class=\"qkit-box", at + 1))
    ++r.flow_boxes;
  std::istringstream lines(read_text(log));
  for (std::string line; std::getline(lines, line);)
    if (line.find(":CONSOLE") != std::string::npos) r.console.push_back(line);
  return r;
}

}  // namespace report_browser
