// Test helpers for Status: shared by the core's C++ tests (never built into the core itself).
//
//   ASSERT_OK(expr)          fails the test, printing the status, unless `expr` returns an OK Status.
//   Contains(text, part)     for EXPECT_PRED2: messages must name the field, not match word for word.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "status.h"

#define ASSERT_OK(expr)                              \
  do {                                               \
    const ::adrank::Status status_ = (expr);         \
    ASSERT_TRUE(status_.ok()) << status_.ToString(); \
  } while (0)

namespace adrank {

inline bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace adrank
