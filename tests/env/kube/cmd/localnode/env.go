// A container's environment: env, envFrom, the downward API, $(VAR) expansion, and what a runtime adds.

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandVars does Kubernetes' $(VAR) expansion for command, args and env values.
func expandVars(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(ref string) string {
		if v, ok := env[ref[2:len(ref)-1]]; ok {
			return v
		}
		return ref
	})
}

func (r *podRunner) fieldValue(path string) (string, error) {
	p := r.pod
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return r.ip, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	}
	if m := regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`).FindStringSubmatch(path); m != nil {
		if m[1] == "labels" {
			return p.Labels[m[2]], nil
		}
		return p.Annotations[m[2]], nil
	}
	return "", &podError{"CreateContainerConfigError", fmt.Sprintf("unsupported fieldRef %q", path)}
}

func (r *podRunner) containerEnv(ctx context.Context, c corev1.Container) ([]string, error) {
	core := r.agent.client.CoreV1()
	ns := r.pod.Namespace
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		optional := false
		switch {
		case from.ConfigMapRef != nil:
			optional = from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional
			cm, err := core.ConfigMaps(ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional && apierrors.IsNotFound(err) {
					continue
				}
				return nil, fmt.Errorf("configmap %s: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			optional = from.SecretRef.Optional != nil && *from.SecretRef.Optional
			s, err := core.Secrets(ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if optional && apierrors.IsNotFound(err) {
					continue
				}
				return nil, fmt.Errorf("secret %s: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, vals))
			continue
		}
		src := e.ValueFrom
		switch {
		case src.FieldRef != nil:
			v, err := r.fieldValue(src.FieldRef.FieldPath)
			if err != nil {
				return nil, err
			}
			set(e.Name, v)
		case src.ConfigMapKeyRef != nil:
			ref := src.ConfigMapKeyRef
			cm, err := core.ConfigMaps(ns).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil || cm.Data[ref.Key] == "" && ref.Optional != nil && *ref.Optional {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: configmap %s: %v", e.Name, ref.Name, err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				return nil, fmt.Errorf("env %s: configmap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, v)
		case src.SecretKeyRef != nil:
			ref := src.SecretKeyRef
			s, err := core.Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s: %v", e.Name, ref.Name, err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			set(e.Name, string(v))
		case src.ResourceFieldRef != nil:
			set(e.Name, "0")
		}
	}
	// What a container runtime and kubelet add around the pod's own env.
	defaults := map[string]string{
		"PATH":     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME": r.pod.Name,
		"HOME":     filepath.Join(r.dir, "home"),
	}
	for k, v := range r.agent.cfg.Env {
		defaults[k] = v
	}
	if kc := filepath.Join(r.dir, "kubeconfig"); fileExists(kc) {
		defaults["KUBECONFIG"] = kc
	}
	keys := make([]string, 0, len(defaults))
	for k := range defaults {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, own := vals[k]; !own {
			set(k, defaults[k])
		}
	}
	if r.agent.marker != "" {
		k, v, _ := strings.Cut(r.agent.marker, "=")
		set(k, v)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vals[k])
	}
	return env, nil
}
