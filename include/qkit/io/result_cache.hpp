// qkit/io/result_cache.hpp — what lets a long search (AutoQuant's stages, AMP's evaluations)
// resume: results kept as JSON entries in one file beside a fingerprint of the inputs they came
// from. A cache made from other inputs, or one that cannot be read, is ignored (and the log
// says so) rather than trusted; every entry is written atomically as soon as it is known, so a
// run stopped half way keeps everything it finished.
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "atomic_file.hpp"

namespace qkit::io {

/// FNV-1a, 64 bits: a cache fingerprint (not a security measure: it tells runs apart).
struct fnv1a {
  std::uint64_t h = 14695981039346656037ull;
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void text(const std::string& s) {
    bytes(s.data(), s.size());
    bytes("\0", 1);
  }
  template <class T>
  void value(const T& v) { bytes(&v, sizeof v); }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }
};

/// FNV-1a of a file's bytes with its size ("" when it is not a regular file): tells whether a
/// file a cache entry points to is still the one that was written.
inline std::string file_digest(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(p, ec)) return {};
  const std::string bytes = read_file(p);
  fnv1a f;
  f.bytes(bytes.data(), bytes.size());
  return f.hex() + ":" + std::to_string(bytes.size());
}

/// A JSON object of results in `file`, valid for one fingerprint. Default-constructed: off
/// (nothing found, nothing written).
class result_cache {
 public:
  result_cache() = default;
  /// Opens (creates the folder of) `file`; its entries are used when its fingerprint matches.
  /// `what` names the inputs in the message of a mismatch ("model, data, precision or options").
  result_cache(std::filesystem::path file, std::string fingerprint, const std::string& what,
               const std::function<void(const std::string&)>& say)
      : file_(std::move(file)), fingerprint_(std::move(fingerprint)), on_(true) {
    std::filesystem::create_directories(file_.parent_path());
    if (!std::filesystem::exists(file_)) return;
    try {
      nlohmann::json j = nlohmann::json::parse(read_file(file_));
      if (j.value("fingerprint", std::string()) == fingerprint_) {
        entries_ = j.at("entries");
        if (!entries_.is_object()) throw std::runtime_error("\"entries\" is not an object");
        say("resuming from the cache " + file_.parent_path().string() + " (" + std::to_string(entries_.size()) +
            " entries)");
      } else {
        say("the cache " + file_.parent_path().string() + " was made from other inputs (" + what +
            "): ignored, everything runs again");
      }
    } catch (const std::exception& e) {
      say("the cache file " + file_.string() + " is unreadable (" + e.what() + "): ignored");
      entries_ = nlohmann::json::object();
    }
  }

  bool enabled() const { return on_; }
  const std::filesystem::path& file() const { return file_; }
  std::size_t size() const { return entries_.size(); }
  /// The entry under `key`, or nullptr.
  const nlohmann::json* find(const std::string& key) const {
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : &*it;
  }
  /// Stores (replaces) an entry and writes the file at once.
  void put(const std::string& key, nlohmann::json v) {
    if (!on_) return;
    entries_[key] = std::move(v);
    const nlohmann::json j{{"fingerprint", fingerprint_}, {"entries", entries_}};
    write_file_atomically(file_, j.dump(1) + "\n");
  }

 private:
  std::filesystem::path file_;
  std::string fingerprint_;
  nlohmann::json entries_ = nlohmann::json::object();
  bool on_ = false;
};

}  // namespace qkit::io
