/*
 * sg_test_cert.h: a throwaway P-256 key and a self-signed certificate
 * for "mx.test", for the unit tests that run real TLS handshakes over a
 * socket pair.
 */
#ifndef SG_TEST_CERT_H
#define SG_TEST_CERT_H

#include <openssl/evp.h>
#include <openssl/x509.h>

static inline int
sg_test_make_cert(EVP_PKEY **key, X509 **cert)
{
    X509_NAME  *name;

    *key = EVP_EC_gen("P-256");
    *cert = X509_new();
    if (*key == NULL || *cert == NULL) {
        return -1;
    }
    X509_set_version(*cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(*cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(*cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(*cert), 3600);
    name = X509_get_subject_name(*cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *) "mx.test", -1, -1, 0);
    X509_set_issuer_name(*cert, name);
    X509_set_pubkey(*cert, *key);
    return X509_sign(*cert, *key, EVP_sha256()) > 0 ? 0 : -1;
}

#endif /* SG_TEST_CERT_H */
