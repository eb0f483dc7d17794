// Tenant names and policies: what a client may send as its tenant, and what a configuration may say.
#include "tenants.h"

#include <gtest/gtest.h>

#include <string>

namespace adrank {
namespace {

TEST(TenantNameTest, AcceptsNamesOfTheDocumentedForm) {
  for (const char* name : {"default", "a", "Ads-Server_2", "team.search", "0abc"}) {
    EXPECT_TRUE(ValidateTenantName(name).ok()) << name;
  }
  EXPECT_TRUE(ValidateTenantName(std::string(kMaxTenantNameBytes, 'x')).ok());
}

TEST(TenantNameTest, RefusesAnythingElseNamingTheField) {
  for (const std::string& name :
       {std::string(""), std::string("-lead"), std::string(".hidden"), std::string("a b"), std::string("a/b"),
        std::string("caf\xc3\xa9"), std::string("x\ny"), std::string(kMaxTenantNameBytes + 1, 'x')}) {
    const Status status = ValidateTenantName(name);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(status.message().find("x-adrank-tenant"), std::string::npos) << status.message();
  }
}

TEST(TenantNameTest, ShowsOnlyAPrintableBoundedPrefixOfABadName) {
  const Status status = ValidateTenantName(std::string("bad\x01") + std::string(1000, 'z'));
  EXPECT_EQ(status.message().find('\x01'), std::string::npos);
  EXPECT_LT(status.message().size(), 300u);
}

TEST(TenantOptionsTest, PolicyOfFallsBackToTheDefaults) {
  TenantOptions options;
  options.defaults.max_in_flight = 7;
  options.tenants["gold"].weight = 4;
  EXPECT_EQ(options.PolicyOf("gold").weight, 4);
  EXPECT_EQ(options.PolicyOf("gold").max_in_flight,
            TenantPolicy{}.max_in_flight);  // a listed tenant has its own full policy
  EXPECT_EQ(options.PolicyOf("anyone").max_in_flight, 7);
}

TEST(TenantOptionsTest, ValidateNamesTheBadTenantAndField) {
  TenantOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.tenants["gold"].weight = 0;
  Status status = options.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("tenant 'gold': weight"), std::string::npos) << status.message();

  options.tenants["gold"].weight = 1;
  options.tenants["gold"].max_in_flight = 0;
  EXPECT_NE(options.Validate().message().find("max_in_flight"), std::string::npos);

  options.tenants["gold"].max_in_flight = 1;
  options.tenants["bad name"] = TenantPolicy{};
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);

  options.tenants.erase("bad name");
  options.max_tenants = 0;
  EXPECT_NE(options.Validate().message().find("max_tenants"), std::string::npos);
}

}  // namespace
}  // namespace adrank
