// qkit/io/atomic_file.hpp — the one way qkit writes a file: into a temporary beside it, then
// rename over the target. A crash or an exception mid-write leaves the old file as it was and
// never half a new one (rename within one directory is atomic on POSIX file systems).
#pragma once

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

#include "../config.hpp"
#include "../error.hpp"

namespace qkit::io {

namespace detail {

/// `<path>.tmp.<pid>.<n>`: the pid keeps processes apart, n keeps threads of one process apart.
inline std::filesystem::path temporary_path_for(const std::filesystem::path& path) {
  static std::atomic<unsigned long> counter{0};
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(static_cast<long>(::getpid())) + "." +
         std::to_string(counter.fetch_add(1));
  return tmp;
}

/// Flushes the file's data to the device, so that after the rename the new name never points
/// at data still only in the page cache when the machine goes down.
inline bool sync_file(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

}  // namespace detail

/// Writes `path` by calling `writer` on a binary stream opened on a temporary file in the
/// same directory, then renaming it over `path`. If `writer` throws, or the stream fails, the
/// temporary is removed, `path` keeps its old content, and the exception propagates
/// (stream failures become qkit::error naming the file).
inline void write_file_atomically(const std::filesystem::path& path,
                                  const std::function<void(std::ostream&)>& writer) {
  const std::filesystem::path tmp = detail::temporary_path_for(path);
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out)
        QKIT_THROW(qkit::error, "cannot create file '", tmp.string(), "' to write '",
                   path.string(), "'");
      writer(out);
      out.flush();
      if (!out)
        QKIT_THROW(qkit::error, "writing '", path.string(), "' failed (via temporary '",
                   tmp.string(), "')");
      out.close();
      if (out.fail())
        QKIT_THROW(qkit::error, "closing '", tmp.string(), "' failed while writing '",
                   path.string(), "'");
    }
    if (!detail::sync_file(tmp))
      QKIT_THROW(qkit::error, "cannot flush '", tmp.string(), "' to disk");
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec)
      QKIT_THROW(qkit::error, "cannot rename '", tmp.string(), "' to '", path.string(),
                 "': ", ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

/// Convenience: atomically replaces `path` with exactly `contents`.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  write_file_atomically(path, [&](std::ostream& out) {
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  });
}

/// The whole content of a small file qkit wrote itself (a cache or stage record); a file that
/// cannot be opened or read is an error naming it.
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  QKIT_PRECONDITION(in, error, "cannot open '", path.string(), "'");
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  QKIT_PRECONDITION(!in.bad(), error, "cannot read '", path.string(), "'");
  return out;
}

}  // namespace qkit::io
