// qkit/io/terminal.hpp — progress lines for long work (AdaRound, training): on a terminal one
// line rewritten in place, in a log or a pipe one line per report, always on stderr so a
// program's own output stays clean.
#pragma once

#include <cstdio>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace qkit::io {

inline bool stderr_is_terminal() {
#if defined(__unix__) || defined(__APPLE__)
  static const bool tty = ::isatty(2) != 0;
  return tty;
#else
  return false;
#endif
}

/// Prints `text` as a progress line on stderr. On a terminal the line is rewritten in place
/// until `final_line` ends it; elsewhere every call prints a line of its own (callers report
/// less often there).
inline void progress_line(const std::string& text, bool final_line) {
  const bool tty = stderr_is_terminal();
  std::fprintf(stderr, "%s%s%s", tty ? "\r" : "", text.c_str(), tty && !final_line ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace qkit::io
